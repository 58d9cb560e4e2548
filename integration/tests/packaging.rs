//! What crates.io and docs.rs get: the package's file list, and documentation that builds
//! without a warning.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the integration crate lives inside the workspace")
        .to_path_buf()
}

/// Runs `$CARGO args` (`cargo` when `CARGO` is unset) from the workspace root with `envs`,
/// and returns its output once it succeeded.
///
/// # Panics
///
/// If cargo cannot be run or fails; the message holds its output.
fn cargo(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let output = Command::new(&cargo)
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cargo:?}: {e}"));
    assert!(
        output.status.success(),
        "`cargo {}` failed ({}):\n{}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    output
}

#[test]
fn the_package_holds_the_crate_its_examples_and_docs_only() {
    let output = cargo(
        &[
            "package",
            "--list",
            "--allow-dirty",
            "--offline",
            "-p",
            "actix-endless",
        ],
        &[],
    );
    let listing = String::from_utf8(output.stdout).expect("the file list is UTF-8");
    let files: Vec<&str> = listing.lines().map(str::trim).collect();

    for required in [
        "Cargo.toml",
        "README.md",
        "CHANGELOG.md",
        "src/lib.rs",
        "examples/hello.rs",
    ] {
        assert!(
            files.contains(&required),
            "{required} is not in the package:\n{listing}"
        );
    }
    for file in &files {
        assert!(
            !file.starts_with("target/") && !file.starts_with("integration/"),
            "{file} should not be in the package"
        );
        let allowed = file.starts_with("src/")
            || file.starts_with("examples/")
            || file.starts_with("LICENSE")
            || [
                "Cargo.toml",
                "Cargo.toml.orig",
                "Cargo.lock",
                ".cargo_vcs_info.json",
                "README.md",
                "CHANGELOG.md",
            ]
            .contains(file);
        assert!(allowed, "{file} should not be in the package:\n{listing}");
    }
}

#[test]
fn the_documentation_builds_without_warnings() {
    cargo(
        &["doc", "--no-deps", "--all-features", "-p", "actix-endless"],
        &[("RUSTDOCFLAGS", "-Dwarnings")],
    );
}
