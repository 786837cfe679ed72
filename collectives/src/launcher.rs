//! Which launcher started this process, and what it says: rank, size,
//! local rank, and where rank 0's rendezvous is.
//!
//! Read from the environment a launcher sets, in this order (the first
//! that is there wins):
//!
//! | launcher | rank, size | local rank | rendezvous |
//! |---|---|---|---|
//! | `cargo xtask run` | `SHOAL_RANK`, `SHOAL_SIZE` | `SHOAL_LOCAL_RANK` | `SHOAL_RENDEZVOUS` |
//! | torchrun | `RANK`, `WORLD_SIZE` (with `MASTER_ADDR` or `TORCHELASTIC_RUN_ID`) | `LOCAL_RANK` | `MASTER_ADDR`:`MASTER_PORT`+1 |
//! | Open MPI's mpirun | `OMPI_COMM_WORLD_RANK`, `OMPI_COMM_WORLD_SIZE` | `OMPI_COMM_WORLD_LOCAL_RANK` | — |
//! | PMI (MPICH's hydra, srun `--mpi=pmi2`) | `PMI_RANK`, `PMI_SIZE` | `MPI_LOCALRANKID` | — |
//! | Slurm's srun | `SLURM_PROCID`, `SLURM_NTASKS` | `SLURM_LOCALID` | — |
//!
//! `SHOAL_RENDEZVOUS` (`HOST:PORT`) overrides the rendezvous whatever the
//! launcher. torchrun's own store listens on `MASTER_PORT`, so shoal's
//! takes the port after it. Where the launcher names no rendezvous, and
//! every rank is on one host, rank 0 binds loopback and leaves its
//! address in a file under `/dev/shm` named by the job (see
//! [`Launch::job`]); across hosts, set `SHOAL_RENDEZVOUS`.
//!
//! With none of these variables, the process is a group of one, which
//! needs no rendezvous.

use crate::error::{Error, Result};

/// The launcher a process was started by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// `cargo xtask run` (or anything that sets `SHOAL_RANK`).
    Shoal,
    /// PyTorch's torchrun (or a torchrun-style environment).
    Torchrun,
    /// Open MPI's mpirun.
    OpenMpi,
    /// A PMI launcher (MPICH's hydra, srun with PMI).
    Pmi,
    /// Slurm's srun.
    Slurm,
    /// None: a group of one.
    None,
}

/// What the launcher said.
///
/// ```
/// use shoal_collectives::launcher::{Launch, Launcher};
/// let env = [("OMPI_COMM_WORLD_RANK", "2"), ("OMPI_COMM_WORLD_SIZE", "4")];
/// let l = Launch::from_vars(|k| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))?;
/// assert_eq!((l.launcher, l.rank, l.size), (Launcher::OpenMpi, 2, 4));
/// # Ok::<(), shoal_collectives::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// Who started the process.
    pub launcher: Launcher,
    /// This process's rank, below `size`.
    pub rank: u32,
    /// Ranks in all.
    pub size: u32,
    /// Its rank among the ranks of its host, if the launcher says (the
    /// group works out who shares a host itself; this is a hint).
    pub local_rank: Option<u32>,
    /// Ranks on its host, if the launcher says.
    pub local_size: Option<u32>,
    /// Where rank 0's rendezvous listens (`HOST:PORT`), if given.
    pub rendezvous: Option<String>,
    /// What names this job on its host, for a rendezvous found through a
    /// file when none is given: the launcher's job id, else the parent's
    /// pid (every rank of a one-host launch is a child of one launcher).
    pub job: String,
}

impl Launch {
    /// Reads the process's environment.
    pub fn from_env() -> Result<Launch> {
        Launch::from_vars(|k| std::env::var(k).ok())
    }

    /// Reads the variables `var` gives (`None`: not set).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Launch> {
        let has = |k: &str| var(k).is_some();
        let (launcher, rank, size, local_rank, local_size) = if has("SHOAL_RANK") {
            (
                Launcher::Shoal,
                "SHOAL_RANK",
                "SHOAL_SIZE",
                "SHOAL_LOCAL_RANK",
                "SHOAL_LOCAL_SIZE",
            )
        } else if has("RANK")
            && has("WORLD_SIZE")
            && (has("MASTER_ADDR") || has("TORCHELASTIC_RUN_ID"))
        {
            (
                Launcher::Torchrun,
                "RANK",
                "WORLD_SIZE",
                "LOCAL_RANK",
                "LOCAL_WORLD_SIZE",
            )
        } else if has("OMPI_COMM_WORLD_RANK") {
            (
                Launcher::OpenMpi,
                "OMPI_COMM_WORLD_RANK",
                "OMPI_COMM_WORLD_SIZE",
                "OMPI_COMM_WORLD_LOCAL_RANK",
                "OMPI_COMM_WORLD_LOCAL_SIZE",
            )
        } else if has("PMI_RANK") {
            (
                Launcher::Pmi,
                "PMI_RANK",
                "PMI_SIZE",
                "MPI_LOCALRANKID",
                "MPI_LOCALNRANKS",
            )
        } else if has("SLURM_PROCID") {
            (
                Launcher::Slurm,
                "SLURM_PROCID",
                "SLURM_NTASKS",
                "SLURM_LOCALID",
                "SLURM_NTASKS_PER_NODE",
            )
        } else {
            return Ok(Launch {
                launcher: Launcher::None,
                rank: 0,
                size: 1,
                local_rank: Some(0),
                local_size: Some(1),
                rendezvous: None,
                job: job(&var),
            });
        };
        let number = |k: &str| -> Result<Option<u32>> {
            match var(k) {
                None => Ok(None),
                Some(v) => v
                    .trim()
                    .parse::<u32>()
                    .map(Some)
                    .map_err(|_| Error::Environment(format!("{k}={v:?} is not a number"))),
            }
        };
        let rank = number(rank)?.unwrap_or(0);
        let size = number(size)?.ok_or_else(|| {
            Error::Environment(format!(
                "{rank_var} is set but {size} is not",
                rank_var = rank
            ))
        })?;
        if size == 0 || rank >= size {
            return Err(Error::Environment(format!(
                "rank {rank} of {size}: a rank must be below a size of at least 1"
            )));
        }
        // Slurm's tasks per node may read "2(x3),1": only a plain number
        // is a hint here.
        let local_size = number(local_size).ok().flatten();
        let local_rank = number(local_rank)?;
        let rendezvous = match var("SHOAL_RENDEZVOUS") {
            Some(r) => Some(r),
            None if launcher == Launcher::Torchrun => torchrun_rendezvous(&var)?,
            None => None,
        };
        Ok(Launch {
            launcher,
            rank,
            size,
            local_rank,
            local_size,
            rendezvous,
            job: job(&var),
        })
    }

    /// Whether the launcher says every rank is on this host.
    pub fn all_local(&self) -> bool {
        self.size == 1 || self.local_size == Some(self.size)
    }
}

/// `MASTER_ADDR:MASTER_PORT+1` (see the module doc), if both are set.
fn torchrun_rendezvous(var: &impl Fn(&str) -> Option<String>) -> Result<Option<String>> {
    let (Some(addr), Some(port)) = (var("MASTER_ADDR"), var("MASTER_PORT")) else {
        return Ok(None);
    };
    let port: u16 = port
        .trim()
        .parse()
        .map_err(|_| Error::Environment(format!("MASTER_PORT={port:?} is not a port")))?;
    let next = port.checked_add(1).ok_or_else(|| {
        Error::Environment(format!(
            "MASTER_PORT={port}: shoal's rendezvous takes the port after it, and there is none (set SHOAL_RENDEZVOUS)"
        ))
    })?;
    let host = if addr.contains(':') && !addr.starts_with('[') {
        format!("[{addr}]")
    } else {
        addr
    };
    Ok(Some(format!("{host}:{next}")))
}

/// The job's name on this host (see [`Launch::job`]): only characters
/// safe in a file name are kept.
fn job(var: &impl Fn(&str) -> Option<String>) -> String {
    let slurm = var("SLURM_JOB_ID").map(|j| {
        let step = var("SLURM_STEP_ID").unwrap_or_default();
        format!("slurm-{j}.{step}")
    });
    let raw = var("SHOAL_JOB")
        .or_else(|| var("PMIX_NAMESPACE").map(|n| format!("pmix-{n}")))
        .or_else(|| var("OMPI_MCA_ess_base_jobid").map(|n| format!("ompi-{n}")))
        .or_else(|| var("TORCHELASTIC_RUN_ID").map(|n| format!("torch-{n}")))
        .or(slurm)
        .unwrap_or_else(|| {
            // SAFETY: getppid has no preconditions and cannot fail.
            let ppid = unsafe { libc::getppid() };
            format!("ppid-{ppid}")
        });
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(vars: &[(&str, &str)]) -> Result<Launch> {
        Launch::from_vars(|k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn each_launcher_is_read() {
        let l = launch(&[
            ("SHOAL_RANK", "1"),
            ("SHOAL_SIZE", "4"),
            ("SHOAL_LOCAL_RANK", "1"),
            ("SHOAL_LOCAL_SIZE", "2"),
            ("SHOAL_RENDEZVOUS", "10.0.0.1:29500"),
        ])
        .unwrap();
        assert_eq!((l.launcher, l.rank, l.size), (Launcher::Shoal, 1, 4));
        assert_eq!((l.local_rank, l.local_size), (Some(1), Some(2)));
        assert_eq!(l.rendezvous.as_deref(), Some("10.0.0.1:29500"));
        assert!(!l.all_local());

        let l = launch(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "3"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", "29500"),
        ])
        .unwrap();
        assert_eq!((l.launcher, l.rank, l.size), (Launcher::Torchrun, 3, 4));
        assert_eq!(l.rendezvous.as_deref(), Some("127.0.0.1:29501"));

        let l = launch(&[
            ("OMPI_COMM_WORLD_RANK", "0"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
            ("PMIX_NAMESPACE", "prterun-host-1234@1"),
        ])
        .unwrap();
        assert_eq!((l.launcher, l.rank, l.size), (Launcher::OpenMpi, 0, 2));
        assert!(l.all_local());
        assert_eq!(l.job, "pmix-prterun-host-1234_1");

        let l = launch(&[("PMI_RANK", "5"), ("PMI_SIZE", "8")]).unwrap();
        assert_eq!((l.launcher, l.rank, l.size), (Launcher::Pmi, 5, 8));

        let l = launch(&[
            ("SLURM_PROCID", "7"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "3"),
            ("SLURM_NTASKS_PER_NODE", "4(x2)"),
            ("SLURM_JOB_ID", "99"),
            ("SLURM_STEP_ID", "0"),
        ])
        .unwrap();
        assert_eq!((l.launcher, l.rank, l.size), (Launcher::Slurm, 7, 8));
        assert_eq!((l.local_rank, l.local_size), (Some(3), None));
        assert_eq!(l.job, "slurm-99.0");

        let l = launch(&[]).unwrap();
        assert_eq!((l.launcher, l.rank, l.size), (Launcher::None, 0, 1));
        assert!(l.job.starts_with("ppid-"));
    }

    #[test]
    fn the_more_precise_launcher_wins() {
        // mpirun inside a Slurm allocation: Open MPI's numbers.
        let l = launch(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "1"),
            ("OMPI_COMM_WORLD_RANK", "3"),
            ("OMPI_COMM_WORLD_SIZE", "4"),
        ])
        .unwrap();
        assert_eq!((l.launcher, l.rank), (Launcher::OpenMpi, 3));
        // torchrun under srun: torchrun's worker numbers.
        let l = launch(&[
            ("SLURM_PROCID", "1"),
            ("SLURM_NTASKS", "2"),
            ("RANK", "6"),
            ("WORLD_SIZE", "8"),
            ("TORCHELASTIC_RUN_ID", "job"),
        ])
        .unwrap();
        assert_eq!((l.launcher, l.rank, l.size), (Launcher::Torchrun, 6, 8));
        // A bare RANK is not a launcher.
        let l = launch(&[("RANK", "1"), ("WORLD_SIZE", "2")]).unwrap();
        assert_eq!(l.launcher, Launcher::None);
    }

    #[test]
    fn bad_environments_are_refused_by_name() {
        for (vars, says) in [
            (
                &[("SHOAL_RANK", "x"), ("SHOAL_SIZE", "2")][..],
                "SHOAL_RANK",
            ),
            (&[("SHOAL_RANK", "0")][..], "SHOAL_SIZE"),
            (
                &[("SHOAL_RANK", "2"), ("SHOAL_SIZE", "2")][..],
                "rank 2 of 2",
            ),
            (
                &[("SHOAL_RANK", "0"), ("SHOAL_SIZE", "0")][..],
                "rank 0 of 0",
            ),
            (
                &[
                    ("RANK", "0"),
                    ("WORLD_SIZE", "1"),
                    ("MASTER_ADDR", "h"),
                    ("MASTER_PORT", "65535"),
                ][..],
                "port after it",
            ),
        ] {
            let e = launch(vars).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn ipv6_masters_are_bracketed() {
        let l = launch(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "::1"),
            ("MASTER_PORT", "100"),
        ])
        .unwrap();
        assert_eq!(l.rendezvous.as_deref(), Some("[::1]:101"));
    }
}
