//! The workspace's task runner: `cargo xtask <task>`.
//!
//! - `test`: everything CI runs after fmt and clippy: the whole test suite
//!   (with cargo-nextest when installed), the loom models, and a build of the
//!   fuzz target.
//! - `loom`: only the loom models.
//! - `fuzz-build`: only build the fuzz target (stable toolchain).
//! - `bench-matrix [--quick] [--out DIR] [--only NAME]`: provision what the
//!   peers need, build the harnesses in release mode, run the matrix, print
//!   its table (see `bench/src/bin/matrix.rs`).

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

fn tests() -> Result<(), String> {
    if has_nextest() {
        run(
            "tests (nextest)",
            cargo().args(["nextest", "run", "--workspace", "--no-fail-fast"]),
        )?;
        // nextest does not run doctests.
        run("doctests", cargo().args(["test", "--workspace", "--doc"]))
    } else {
        run("tests", cargo().args(["test", "--workspace"]))
    }
}

fn loom() -> Result<(), String> {
    let mut c = cargo();
    c.args(["test", "-p", "shoal-shm-ring", "--release", "--lib", "loom"])
        .env("RUSTFLAGS", "--cfg loom")
        .env("CARGO_TARGET_DIR", "target/loom")
        .env(
            "LOOM_MAX_PREEMPTIONS",
            std::env::var("LOOM_MAX_PREEMPTIONS").unwrap_or_else(|_| "2".into()),
        );
    run("loom models", &mut c)
}

fn fuzz_build() -> Result<(), String> {
    run(
        "fuzz target build",
        cargo().args(["build", "--manifest-path", "fuzz/Cargo.toml", "--bins"]),
    )
}

fn bench_matrix(args: &[String]) -> Result<(), String> {
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
        "test" => tests().and_then(|_| loom()).and_then(|_| fuzz_build()),
        "loom" => loom(),
        "fuzz-build" => fuzz_build(),
        "bench-matrix" => {
            let rest: Vec<String> = std::env::args().skip(2).collect();
            bench_matrix(&rest)
        }
        _ => {
            eprintln!("usage: cargo xtask <test | loom | fuzz-build | bench-matrix [--quick] [--out DIR]>");
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
