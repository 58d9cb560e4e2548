//! Unit tests of the inheritance protocol's parser.

use super::*;

fn env(pid: &str, fds: &str) -> InheritEnv {
    InheritEnv {
        listen_pid: Some(pid.into()),
        listen_fds: Some(fds.into()),
        ..Default::default()
    }
}

#[test]
fn descriptors_without_listen_pid_are_adopted_only_on_request() {
    let no_pid = InheritEnv {
        listen_fds: Some("2".into()),
        ..Default::default()
    };
    let ignored = parse(&no_pid, 42, Unclaimed::Ignore).unwrap();
    assert!(ignored.listeners.is_empty());
    let why = ignored.ignored.expect("says what was ignored");
    assert!(
        why.contains("LISTEN_FDS=2") && why.contains("adopt_unclaimed_fds"),
        "{why}"
    );
    let adopted = parse(&no_pid, 42, Unclaimed::Adopt).unwrap();
    assert_eq!(adopted.listeners.len(), 2);
    assert_eq!(adopted.ignored, None);
    // Meant for another process: ignored either way, silently.
    for unclaimed in [Unclaimed::Ignore, Unclaimed::Adopt] {
        let other = parse(&env("41", "2"), 42, unclaimed).unwrap();
        assert!(other.listeners.is_empty() && other.ignored.is_none());
    }
    assert_eq!(
        parse(&InheritEnv::default(), 42, Unclaimed::Adopt)
            .unwrap()
            .listeners,
        vec![]
    );
}

#[test]
fn no_variables_is_a_fresh_start() {
    let plan = parse(&InheritEnv::default(), 42, Unclaimed::Ignore).unwrap();
    assert!(plan.listeners.is_empty());
    assert_eq!(plan.generation, 1);
}

#[test]
fn other_pid_is_ignored() {
    let plan = parse(&env("41", "2"), 42, Unclaimed::Ignore).unwrap();
    assert!(plan.listeners.is_empty());
}

#[test]
fn fds_and_names_are_numbered_from_three() {
    let mut e = env("42", "2");
    e.listen_fdnames = Some("web:admin".into());
    e.ready_fd = Some("5".into());
    e.generation = Some("7".into());
    let plan = parse(&e, 42, Unclaimed::Ignore).unwrap();
    assert_eq!(plan.listeners, vec![(3, "web".into()), (4, "admin".into())]);
    assert_eq!(plan.ready_fd, Some(5));
    assert_eq!(plan.generation, 7);
}

#[test]
fn garbage_names_the_variable() {
    let err = parse(&env("42", "two"), 42, Unclaimed::Ignore)
        .unwrap_err()
        .to_string();
    assert!(err.contains("LISTEN_FDS"), "{err}");
    let err = parse(&env("x", "1"), 42, Unclaimed::Ignore)
        .unwrap_err()
        .to_string();
    assert!(err.contains("LISTEN_PID"), "{err}");
    let mut e = env("42", "2");
    e.listen_fdnames = Some("one".into());
    assert!(parse(&e, 42, Unclaimed::Ignore)
        .unwrap_err()
        .to_string()
        .contains("LISTEN_FDNAMES"));
    let mut e = env("42", "1");
    e.ready_fd = Some("3".into());
    assert!(parse(&e, 42, Unclaimed::Ignore)
        .unwrap_err()
        .to_string()
        .contains(READY_FD));
    let mut e = env("42", "1");
    e.generation = Some("0".into());
    assert!(parse(&e, 42, Unclaimed::Ignore)
        .unwrap_err()
        .to_string()
        .contains(GENERATION));
    let err = parse(&env("42", "99999999999999999999999"), 42, Unclaimed::Ignore).unwrap_err();
    assert!(err.to_string().contains("LISTEN_FDS"));
}

#[test]
fn parser_never_panics_on_arbitrary_input() {
    // A deterministic property test: every combination of awkward values.
    let samples = [
        "",
        "0",
        "1",
        "3",
        "-1",
        "+1",
        " 1",
        "1 ",
        "4096",
        "4097",
        "18446744073709551616",
        "0x10",
        "ünï",
        ":",
        "a:b",
        "::",
        "\u{1}",
        "2147483647",
        "2147483648",
    ];
    for pid in ["42", "x", ""] {
        for fds in samples {
            for names in samples {
                for other in samples {
                    let e = InheritEnv {
                        listen_pid: Some(pid.into()),
                        listen_fds: Some(fds.into()),
                        listen_fdnames: Some(names.into()),
                        ready_fd: Some(other.into()),
                        generation: Some(other.into()),
                        master_pid: Some(other.into()),
                    };
                    let _ = parse(&e, 42, Unclaimed::Ignore);
                }
            }
        }
    }
}
