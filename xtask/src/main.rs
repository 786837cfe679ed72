//! The workspace's task runner: `cargo xtask <task>`.
//!
//! - `test`: everything CI runs after fmt and clippy: the whole test suite
//!   (with cargo-nextest when installed), the collectives check under real
//!   launchers (`launchers`), the loom models, and a build of the fuzz
//!   target.
//! - `launchers`: the collectives check (`collectives/examples/`) under
//!   `run -n 4`, `run -n 4 --hosts 2` (root) and Open MPI's `mpirun -n 4`
//!   (installed from Debian's packages when missing, as root).
//! - `provision`: install the system tools the optional backends need
//!   (cmake for nng) when missing, and the foreign nng peers the interop
//!   tests talk to (pynng from PyPI, nngcat from Debian's nng-utils);
//!   `test` and `bench-matrix` do what they need of it first.
//! - `loom`: only the loom models.
//! - `fuzz-build`: only build the fuzz target (stable toolchain).
//! - `bench-matrix [--quick] [--out DIR] [--only NAME]`: provision what the
//!   peers need, build the harnesses in release mode, run the matrix, print
//!   its table (see `bench/src/bin/matrix.rs`).
//! - `run -n N [--hosts H] [--grace SECS] [--timeout SECS] -- CMD [ARGS...]`:
//!   a local launcher for shoal's collectives (like mpirun): start N
//!   processes of CMD with `SHOAL_RANK`, `SHOAL_SIZE`, `SHOAL_LOCAL_RANK`,
//!   `SHOAL_LOCAL_SIZE`, `SHOAL_NODE` and `SHOAL_RENDEZVOUS` set, their
//!   output prefixed `[rank i] `; with H > 1 (root only), each host is a
//!   network namespace of its own (see `run.rs` and `netns.rs`).

mod netns;
mod run;

use std::process::{Command, ExitCode};
use std::time::Instant;

fn run(what: &str, cmd: &mut Command) -> Result<(), String> {
    let t0 = Instant::now();
    eprintln!("xtask: {what}: {cmd:?}");
    let st = cmd
        .status()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    eprintln!("xtask: {what}: {st} in {:.1}s", t0.elapsed().as_secs_f64());
    if st.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({st})"))
    }
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn has_nextest() -> bool {
    cargo()
        .args(["nextest", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// The optional backends the tests and benchmarks build in (their
/// system tools are provisioned by [`provision`]).
const FEATURES: &str =
    "shoal-transport/nng,shoal-transport/quic,shoal-channel/nng,shoal-channel/quic,shoal-tests/nng,shoal-tests/quic";

/// Installs what the optional backends' builds need and a fresh machine
/// lacks: cmake for nng's vendored C build (`pip install cmake`, about two
/// seconds).
fn provision() -> Result<(), String> {
    let has = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if has("cmake") {
        return Ok(());
    }
    let python = if has("python3") { "python3" } else { "python" };
    run(
        "provision cmake (for nng's vendored build)",
        Command::new(python).args(["-m", "pip", "install", "--quiet", "cmake"]),
    )?;
    if has("cmake") {
        Ok(())
    } else {
        Err(
            "cmake was installed with pip but is not on PATH: add pip's script directory to PATH"
                .into(),
        )
    }
}

/// Installs, when missing, the nng peers nobody here wrote that
/// `transport/tests/nng_interop.rs` talks to: pynng (pip, a wheel that
/// bundles its own NNG) and nngcat (Debian's nng-utils). Not being able to
/// (no root, no registry) is reported, not fatal: the tests then install
/// or skip by themselves and say why.
fn provision_interop() {
    let ok = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ok("python3", &["-c", "import pynng"]) {
        let _ = run(
            "provision pynng (nng interop tests)",
            Command::new("python3").args(["-m", "pip", "install", "--quiet", "pynng"]),
        );
    }
    if !ok("nngcat", &["--version"]) {
        let install = || {
            run(
                "provision nngcat (nng interop tests)",
                Command::new("apt-get").args(["install", "-y", "-q", "nng-utils"]),
            )
        };
        if install().is_err() {
            let _ = run(
                "apt-get update",
                Command::new("apt-get").args(["update", "-q"]),
            );
            let _ = install();
        }
    }
}

fn tests() -> Result<(), String> {
    provision()?;
    provision_interop();
    if has_nextest() {
        run(
            "tests (nextest)",
            cargo().args([
                "nextest",
                "run",
                "--workspace",
                "--features",
                FEATURES,
                "--no-fail-fast",
            ]),
        )?;
        // nextest does not run doctests.
        run(
            "doctests",
            cargo().args(["test", "--workspace", "--features", FEATURES, "--doc"]),
        )
    } else {
        run(
            "tests",
            cargo().args(["test", "--workspace", "--features", FEATURES]),
        )
    }
}

/// Installs Open MPI (mpirun, and mpicc for the bench's peer) from
/// Debian's packages when missing and root; else says why the MPI cells
/// will report themselves skipped.
fn provision_mpi() {
    let has = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    // Debian's openmpi-bin alone has an mpicc that runs (`--version`
    // answers) but no mpi.h (libopenmpi-dev): seen after the launchers'
    // provisioning, which needs mpirun only; the bench's peer then failed
    // to compile ("mpicc failed").
    if has("mpirun") && has("mpicc") && has_mpi_header() {
        return;
    }
    if !netns::is_root().unwrap_or(false) {
        eprintln!("xtask: Open MPI is not installed and this is not root: its cells report themselves skipped");
        return;
    }
    let pkgs = [
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "openmpi-bin",
        "libopenmpi-dev",
    ];
    let install = || run("provision Open MPI", Command::new("apt-get").args(pkgs));
    if install().is_err() {
        let _ = run(
            "apt-get update",
            Command::new("apt-get").args(["update", "-q"]),
        );
        let _ = install();
    }
}

/// Whether mpicc finds `mpi.h` (preprocesses an include of it).
fn has_mpi_header() -> bool {
    use std::io::Write;
    let child = Command::new("mpicc")
        .args(["-E", "-x", "c", "-o", "/dev/null", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        return false;
    };
    let wrote = child
        .stdin
        .take()
        .is_some_and(|mut i| i.write_all(b"#include <mpi.h>\n").is_ok());
    child.wait().is_ok_and(|st| st.success()) && wrote
}

/// The collectives check (`collectives/examples/collectives_check.rs`)
/// started by real launchers: `cargo xtask run -n 4` on one host and, as
/// root, on two network-namespace hosts; Open MPI's `mpirun -n 4`
/// (installed from Debian's packages when missing and root; else
/// reported skipped with the reason).
fn launchers() -> Result<(), String> {
    run(
        "build the collectives check",
        cargo().args([
            "build",
            "-p",
            "shoal-collectives",
            "--example",
            "collectives_check",
        ]),
    )?;
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let exe = format!("{target}/debug/examples/collectives_check");
    let launch = |args: &[&str]| {
        let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        a.extend(["--timeout".into(), "300".into(), "--".into(), exe.clone()]);
        eprintln!("xtask: collectives check: cargo xtask run {}", a.join(" "));
        run::launch(&a)
    };
    launch(&["-n", "4"])?;
    if netns::is_root().unwrap_or(false) {
        launch(&["-n", "4", "--hosts", "2"])?;
    } else {
        eprintln!(
            "xtask: collectives check across hosts skipped: not root (network namespaces need it)"
        );
    }
    let has_mpirun = || {
        Command::new("mpirun")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !has_mpirun() && netns::is_root().unwrap_or(false) {
        let install = || {
            run(
                "provision Open MPI (mpirun)",
                Command::new("apt-get").args([
                    "install",
                    "-y",
                    "-q",
                    "--no-install-recommends",
                    "openmpi-bin",
                ]),
            )
        };
        if install().is_err() {
            let _ = run(
                "apt-get update",
                Command::new("apt-get").args(["update", "-q"]),
            );
            let _ = install();
        }
    }
    if !has_mpirun() {
        eprintln!("xtask: collectives check under mpirun skipped: Open MPI is not installed and could not be");
        return Ok(());
    }
    run(
        "collectives check under mpirun -n 4",
        Command::new("mpirun").args(["--allow-run-as-root", "--oversubscribe", "-n", "4", &exe]),
    )
}

fn loom() -> Result<(), String> {
    let bound = std::env::var("LOOM_MAX_PREEMPTIONS").unwrap_or_else(|_| "2".into());
    let mut c = cargo();
    c.args(["test", "-p", "shoal-shm-ring", "--release", "--lib", "loom"])
        .env("RUSTFLAGS", "--cfg loom")
        .env("CARGO_TARGET_DIR", "target/loom")
        .env("LOOM_MAX_PREEMPTIONS", &bound);
    run("loom models", &mut c)?;
    // The collectives' lock protocol is generic over its words, so its
    // models need no cfg (and tokio under `--cfg loom` would not build).
    let mut c = cargo();
    c.args([
        "test",
        "-p",
        "shoal-collectives",
        "--release",
        "--lib",
        "loom",
    ])
    .env("LOOM_MAX_PREEMPTIONS", &bound);
    run("loom models (collectives lock)", &mut c)
}

fn fuzz_build() -> Result<(), String> {
    run(
        "fuzz target build",
        cargo().args(["build", "--manifest-path", "fuzz/Cargo.toml", "--bins"]),
    )
}

fn bench_matrix(args: &[String]) -> Result<(), String> {
    provision()?;
    provision_mpi();
    run(
        "build harnesses",
        cargo().args(["build", "--release", "-p", "shoal-bench", "--bins"]),
    )?;
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    run(
        "bench matrix",
        Command::new(format!("{target}/release/matrix")).args(args),
    )
}

fn main() -> ExitCode {
    let task = std::env::args().nth(1).unwrap_or_default();
    let r = match task.as_str() {
        "test" => tests()
            .and_then(|_| launchers())
            .and_then(|_| loom())
            .and_then(|_| fuzz_build()),
        "launchers" => launchers(),
        "provision" => provision().map(|()| provision_interop()),
        "loom" => loom(),
        "fuzz-build" => fuzz_build(),
        "bench-matrix" => {
            let rest: Vec<String> = std::env::args().skip(2).collect();
            bench_matrix(&rest)
        }
        "run" => {
            let rest: Vec<String> = std::env::args().skip(2).collect();
            run::launch(&rest)
        }
        _ => {
            eprintln!("usage: cargo xtask <test | launchers | provision | loom | fuzz-build | bench-matrix [--quick] [--out DIR] | run -n N [--hosts H] [--grace SECS] [--timeout SECS] -- CMD [ARGS...]>");
            return ExitCode::from(2);
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}
