//! What OCI runtimes say when they fail, in one table: runc, crun and runsc word the same
//! conditions differently, and the handler's contract hangs on two of them (a container
//! that is gone, and a process that already exited).

/// What a runtime's failure means for the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The runtime has no such container (`state`, `delete`, `kill` of a gone one).
    NoSuchContainer,
    /// The process to signal has already exited.
    AlreadyExited,
    /// Anything else: reported with the runtime's own words.
    Other,
}

/// (runtime, what it prints, what it means). Matched as substrings of stderr.
const TABLE: &[(&str, &str, Failure)] = &[
    ("runc", "does not exist", Failure::NoSuchContainer),
    ("runc", "not found", Failure::NoSuchContainer),
    // crun keeps a directory and a `status` file per container; without them there is
    // no container.
    (
        "crun",
        "/status`: No such file or directory",
        Failure::NoSuchContainer,
    ),
    ("crun", "cannot open directory '", Failure::NoSuchContainer),
    ("runc", "container not running", Failure::AlreadyExited),
    ("runc", "process already finished", Failure::AlreadyExited),
    ("runsc", "not running", Failure::AlreadyExited),
    // crun signals through a pidfd on the init; a dead init has none.
    (
        "crun",
        "open pidfd: No such process",
        Failure::AlreadyExited,
    ),
];

/// What `stderr` of a failed runtime command means.
pub fn classify(stderr: &str) -> Failure {
    TABLE
        .iter()
        .find(|(_, text, _)| stderr.contains(text))
        .map_or(Failure::Other, |(_, _, failure)| *failure)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_runtimes_words_mean_the_same() {
        assert_eq!(
            classify("container \"x\" does not exist"),
            Failure::NoSuchContainer
        );
        assert_eq!(
            classify("error opening file `/run/crun/x/status`: No such file or directory"),
            Failure::NoSuchContainer
        );
        assert_eq!(
            classify("open pidfd: No such process"),
            Failure::AlreadyExited
        );
        assert_eq!(classify("container not running"), Failure::AlreadyExited);
        assert_eq!(classify("permission denied"), Failure::Other);
    }
}
