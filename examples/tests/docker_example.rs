//! Runs `examples/docker.rs` end to end against a real dockerd: it packs itself into an image,
//! prices orders on Docker runners and ends them. Skipped (with the reason) without dockerd
//! unless `FLAME_TEST_ENGINES=required`.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const APP: &str = "flame-docker-example";

fn containers() -> String {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label=flame.app={APP}")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Removes the example's containers however the test ends.
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        for id in containers().split_whitespace() {
            let _ = Command::new("docker").args(["rm", "-f", id]).output();
        }
    }
}

#[test]
fn docker_example_prices_orders_on_docker_runners() {
    let engine = match Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
    {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
        Err(e) => Err(format!("cannot run the docker CLI: {e}")),
    };
    if !flame_core::testkit::engine_available("docker", engine) {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let example = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples")
        .join("docker");
    assert!(
        example.exists(),
        "{} is missing (cargo test builds it)",
        example.display()
    );
    let _cleanup = Cleanup;
    let mut child = Command::new(&example)
        .env_remove("FLAME_MODE")
        .env_remove("FLAME_RUNNER_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > until {
            let _ = child.kill();
            panic!("the docker example ran for more than 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the example failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("total 12415 cents, priced by container"),
        "{stdout}"
    );
    assert!(
        stdout.contains("an empty order is refused: HANDLER_ERROR"),
        "{stdout}"
    );
    assert!(stdout.contains("done:"), "{stdout}");
    assert_eq!(containers(), "", "the example left runner containers");
}
