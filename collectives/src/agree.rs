//! Failing together: when one rank cannot do its local part of a
//! collective set-up (make or attach a host's shared memory, take its
//! place in it), every rank learns so at once instead of waiting for it
//! until a timeout.
//!
//! Two forms: a rank that hands out what it made says a *refusal* in its
//! place ([`refusal`], recognised by [`refused`]), and a step each rank
//! does on its own ends with [`Group::agree`], an all-gather of every
//! rank's outcome.

use crate::error::{Error, Result};
use crate::group::Group;

/// The first byte of a refusal. Nothing said in place of one starts with
/// it: shared-memory names start with `shoal-`.
const REFUSED: u8 = b'!';

/// The most bytes of a reason passed on (a path in it can be long; the
/// group's value limit is 1 GiB by default, but may be set low).
const MAX_REASON: usize = 200;

/// `e` as a refusal: [`REFUSED`] and the reason, cut to [`MAX_REASON`]
/// bytes and to `room` bytes in all (what the group's value limit leaves
/// beside what else the value carries).
pub(crate) fn refusal(e: &Error, room: usize) -> Vec<u8> {
    let why = cut(&e.to_string(), room.saturating_sub(1).min(MAX_REASON));
    let mut v = Vec::with_capacity(1 + why.len());
    v.push(REFUSED);
    v.extend_from_slice(why.as_bytes());
    v
}

/// `s` in at most `max` bytes (cut at a character boundary, marked with
/// "..." when there is room for it), control characters replaced.
fn cut(s: &str, max: usize) -> String {
    let clean: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if clean.len() <= max {
        return clean;
    }
    let mark = if max >= 3 { "..." } else { "" };
    let mut at = max - mark.len();
    while !clean.is_char_boundary(at) {
        at -= 1;
    }
    format!("{}{mark}", &clean[..at])
}

/// The reason in `said`, if it is a refusal (cut to [`MAX_REASON`]
/// bytes, control characters replaced: it comes from another process).
pub(crate) fn refused(said: &[u8]) -> Option<String> {
    match said.split_first() {
        Some((&REFUSED, why)) => Some(cut(&String::from_utf8_lossy(why), MAX_REASON)),
        _ => None,
    }
}

/// The first refusal among every rank's values (its rank and reason).
pub(crate) fn first_refusal(all: &[Vec<u8>]) -> Option<(usize, String)> {
    all.iter()
        .enumerate()
        .find_map(|(r, b)| refused(b).map(|why| (r, why)))
}

impl Group {
    /// Takes part in the collective `what` with `e` as this rank's
    /// refusal, so the others return at once instead of waiting for this
    /// rank; gives `e` back to return.
    pub(crate) fn refuse(&self, what: &str, e: Error) -> Error {
        let _ = self.collect(what, &refusal(&e, self.max_value()), true);
        e
    }

    /// Collective: tells every rank each rank's `outcome` of a step it
    /// did on its own (`what` names the step). `Ok` on every rank when
    /// every rank succeeded; else each rank returns an error at once: its
    /// own when it failed, [`Error::Broken`] naming the first rank that
    /// failed, and why, when it did not. Costs an all-gather.
    pub(crate) fn agree<T>(&self, what: &str, outcome: Result<T>) -> Result<T> {
        let said = match &outcome {
            Ok(_) => Vec::new(),
            Err(e) => refusal(e, self.max_value()),
        };
        let all = self.collect(what, &said, true);
        let outcome = outcome?;
        let all = all?;
        match first_refusal(&all) {
            None => Ok(outcome),
            Some((r, why)) => Err(Error::Broken(format!(
                "{what}: rank {r} could not do its part: {why}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_marked_and_cut() {
        let long = Error::BadArguments("é".repeat(500));
        let r = refusal(&long, usize::MAX);
        assert_eq!(r[0], REFUSED);
        assert!(r.len() <= 1 + MAX_REASON, "{}", r.len());
        let why = refused(&r).unwrap();
        assert!(
            why.ends_with("...") && why.len() <= MAX_REASON,
            "{}",
            why.len()
        );
        // Within a small room (a low value limit).
        for room in [0, 1, 2, 3, 4, 10, 50] {
            let r = refusal(&long, room);
            assert!(r.len() <= room.max(1), "room {room}: {}", r.len());
            assert!(refused(&r).is_some());
        }
        let short = refusal(&Error::BadArguments("no".into()), 1 << 20);
        assert_eq!(refused(&short).as_deref(), Some("bad arguments: no"));
        assert_eq!(refused(b"shoal-1234"), None);
        assert_eq!(refused(b""), None);
        // Another rank's bytes: cut, no control characters.
        let mut hostile = vec![REFUSED];
        hostile.extend(std::iter::repeat_n(b'\n', 5000));
        let why = refused(&hostile).unwrap();
        assert!(why.len() <= MAX_REASON && !why.contains('\n'));
    }

    #[test]
    fn one_rank_agrees_with_itself() {
        let g = Group::single();
        assert_eq!(g.agree("step", Ok(7)).unwrap(), 7);
        let e = g
            .agree::<()>("step", Err(Error::BadArguments("mine".into())))
            .unwrap_err();
        assert!(matches!(e, Error::BadArguments(_)), "{e}");
    }
}
