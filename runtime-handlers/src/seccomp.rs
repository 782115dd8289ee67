//! An OCI seccomp profile compiled to a classic BPF program for the native exec path
//! (`crisp-enter`), with the semantics runc gets from libseccomp: the first
//! rule naming a call whose argument conditions all hold decides; otherwise the
//! profile's default action. A syscall entry with two conditions on the same argument
//! becomes one rule per condition (runc's reading), else one rule with all of them.
//!
//! x86_64 only. Calls made through another ABI (i386 `int 0x80`, x32) get EPERM: stricter
//! than a profile that lists those architectures, never looser. A call number above the
//! newest one the profile names gets ENOSYS when the profile denies by default (runc's
//! stub, so that libc falls back to an older call). A profile naming a call this table does not know, or
//! too long for one BPF program, is refused: the runtime applies it instead.

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};

use crate::syscalls_x86_64::SYSCALLS;

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Instruction {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

/// Why a profile cannot be compiled here (the caller falls back to the OCI runtime).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeccompError {
    /// An action this compiler does not produce (user notification needs a listener).
    #[error("seccomp action {0:?} is not supported by crisp's own filter")]
    Action(LinuxSeccompAction),
    /// An argument index past the six a system call has.
    #[error("seccomp argument index {0} is out of range")]
    ArgIndex(usize),
    /// A rule too long for a classic BPF jump, or a program past the kernel's limit.
    #[error("the seccomp filter is too long")]
    TooLong,
    /// A system call crisp's table does not know.
    #[error("seccomp profile names `{0}`, which crisp's syscall table does not know")]
    UnknownSyscall(String),
}

/// Calls that exist only on other ABIs (i386 and older ports), never on x86_64: a
/// profile naming them means nothing here, and libseccomp skips them on x86_64 too.
const NOT_ON_X86_64: &[&str] = &[
    "_llseek",
    "_newselect",
    "bdflush",
    "break",
    "chown32",
    "clock_adjtime64",
    "clock_getres_time64",
    "clock_gettime64",
    "clock_nanosleep_time64",
    "clock_settime64",
    "fadvise64_64",
    "fchown32",
    "fcntl64",
    "fstat64",
    "fstatat64",
    "fstatfs64",
    "ftime",
    "ftruncate64",
    "futex_time64",
    "getegid32",
    "geteuid32",
    "getgid32",
    "getgroups32",
    "getresgid32",
    "getresuid32",
    "getuid32",
    "gtty",
    "idle",
    "io_pgetevents_time64",
    "ipc",
    "lchown32",
    "lock",
    "lstat64",
    "mmap2",
    "mpx",
    "mq_timedreceive_time64",
    "mq_timedsend_time64",
    "nice",
    "oldfstat",
    "oldlstat",
    "oldolduname",
    "oldstat",
    "olduname",
    "ppoll_time64",
    "prof",
    "profil",
    "pselect6_time64",
    "readdir",
    "recvmmsg_time64",
    "rt_sigtimedwait_time64",
    "sched_rr_get_interval_time64",
    "semtimedop_time64",
    "sendfile64",
    "setfsgid32",
    "setfsuid32",
    "setgid32",
    "setgroups32",
    "setregid32",
    "setresgid32",
    "setresuid32",
    "setreuid32",
    "setuid32",
    "sgetmask",
    "sigaction",
    "signal",
    "sigpending",
    "sigprocmask",
    "sigreturn",
    "sigsuspend",
    "socketcall",
    "ssetmask",
    "stat64",
    "statfs64",
    "stime",
    "stty",
    "timer_gettime64",
    "timer_settime64",
    "timerfd_gettime64",
    "timerfd_settime64",
    "truncate64",
    "ugetrlimit",
    "ulimit",
    "umount",
    "utimensat_time64",
    "vm86",
    "vm86old",
    "waitpid",
];

/// The kernel's limit on a classic BPF program's length.
const MAX_INSTRUCTIONS: usize = 4096;

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_ALU_AND_K: u16 = 0x54;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JGT_K: u16 = 0x25;
const BPF_JGE_K: u16 = 0x35;
const BPF_RET_K: u16 = 0x06;

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
const OFFSET_ARGS: u32 = 16;

const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_KILL_THREAD: u32 = 0x0000_0000;
const RET_TRAP: u32 = 0x0003_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_TRACE: u32 = 0x7ff0_0000;
const RET_LOG: u32 = 0x7ffc_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

fn stmt(code: u16, k: u32) -> Instruction {
    Instruction {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> Instruction {
    Instruction { code, jt, jf, k }
}

/// The system call number of `name` on x86_64.
pub fn syscall_number(name: &str) -> Option<u32> {
    SYSCALLS
        .binary_search_by(|(n, _)| n.cmp(&name))
        .ok()
        .map(|i| SYSCALLS[i].1)
}

fn action(action: LinuxSeccompAction, errno: Option<u32>) -> Result<u32, SeccompError> {
    let data = |default: u32| errno.unwrap_or(default) & 0xffff;
    Ok(match action {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => RET_KILL_THREAD,
        LinuxSeccompAction::ScmpActKillProcess => RET_KILL_PROCESS,
        LinuxSeccompAction::ScmpActTrap => RET_TRAP,
        LinuxSeccompAction::ScmpActErrno => RET_ERRNO | data(libc::EPERM as u32),
        LinuxSeccompAction::ScmpActTrace => RET_TRACE | data(libc::EPERM as u32),
        LinuxSeccompAction::ScmpActLog => RET_LOG,
        LinuxSeccompAction::ScmpActAllow => RET_ALLOW,
        other => return Err(SeccompError::Action(other)),
    })
}

/// Where a condition's jumps go: on to the next condition, or out of the rule.
#[derive(Clone, Copy)]
enum Target {
    Next,
    Fail,
}

/// A jump with symbolic targets, resolved once the rule's length is known.
struct Pending {
    ins: Instruction,
    jt: Option<Target>,
    jf: Option<Target>,
}

fn plain(ins: Instruction) -> Pending {
    Pending {
        ins,
        jt: None,
        jf: None,
    }
}

fn cond_jump(code: u16, k: u32, jt: Target, jf: Target) -> Pending {
    Pending {
        ins: jump(code, k, 0, 0),
        jt: Some(jt),
        jf: Some(jf),
    }
}

/// Instructions testing one 64-bit argument condition.
fn condition(arg: &LinuxSeccompArg) -> Result<Vec<Pending>, SeccompError> {
    let index = u32::try_from(arg.index())
        .ok()
        .filter(|i| *i < 6)
        .ok_or(SeccompError::ArgIndex(arg.index()))?;
    let lo_off = OFFSET_ARGS + 8 * index;
    let hi_off = lo_off + 4;
    let split = |v: u64| ((v >> 32) as u32, v as u32);
    let (vhi, vlo) = split(arg.value());
    let ld = |off| plain(stmt(BPF_LD_W_ABS, off));
    use Target::{Fail, Next};
    // A label meaning "the next instruction" is encoded as a jump of 0.
    let cont = None;
    let mut out = Vec::new();
    match arg.op() {
        op @ (LinuxSeccompOperator::ScmpCmpEq
        | LinuxSeccompOperator::ScmpCmpNe
        | LinuxSeccompOperator::ScmpCmpMaskedEq) => {
            // (arg & mask) == expected, compared word by word; NE is its negation.
            let (mask, expected) = if op == LinuxSeccompOperator::ScmpCmpMaskedEq {
                (arg.value(), arg.value_two().unwrap_or(0))
            } else {
                (u64::MAX, arg.value())
            };
            let (equal, different) = if op == LinuxSeccompOperator::ScmpCmpNe {
                (Fail, Next)
            } else {
                (Next, Fail)
            };
            let ((mhi, mlo), (ehi, elo)) = (split(mask), split(expected));
            out.push(ld(hi_off));
            if mhi != u32::MAX {
                out.push(plain(stmt(BPF_ALU_AND_K, mhi)));
            }
            out.push(Pending {
                ins: jump(BPF_JEQ_K, ehi, 0, 0),
                jt: cont,
                jf: Some(different),
            });
            out.push(ld(lo_off));
            if mlo != u32::MAX {
                out.push(plain(stmt(BPF_ALU_AND_K, mlo)));
            }
            out.push(cond_jump(BPF_JEQ_K, elo, equal, different));
        }
        op => {
            // Unsigned 64-bit order: the high words decide unless equal.
            let (strict, holds_if_greater) = match op {
                LinuxSeccompOperator::ScmpCmpGt => (true, true),
                LinuxSeccompOperator::ScmpCmpGe => (false, true),
                LinuxSeccompOperator::ScmpCmpLt => (false, false),
                _ => (true, false), // LE: not GT
            };
            let (yes, no) = if holds_if_greater {
                (Next, Fail)
            } else {
                (Fail, Next)
            };
            out.push(ld(hi_off));
            out.push(Pending {
                ins: jump(BPF_JGT_K, vhi, 0, 0),
                jt: Some(yes),
                jf: cont,
            });
            out.push(Pending {
                ins: jump(BPF_JEQ_K, vhi, 0, 0),
                jt: cont,
                jf: Some(no),
            });
            out.push(ld(lo_off));
            // GT and LE compare with JGT; GE and LT with JGE.
            let code = if strict { BPF_JGT_K } else { BPF_JGE_K };
            out.push(cond_jump(code, vlo, yes, no));
        }
    }
    Ok(out)
}

/// One rule: the call number, its conditions, the action.
fn rule(nr: u32, args: &[&LinuxSeccompArg], ret: u32) -> Result<Vec<Instruction>, SeccompError> {
    let mut conds = Vec::new();
    for a in args {
        conds.push(condition(a)?);
    }
    let body: usize = conds.iter().map(Vec::len).sum();
    // ld nr; jeq nr (else skip the rest); conditions; ret.
    let total = 2 + body + 1;
    let skip = u8::try_from(total - 2).map_err(|_| SeccompError::TooLong)?;
    let mut out = vec![stmt(BPF_LD_W_ABS, OFFSET_NR), jump(BPF_JEQ_K, nr, 0, skip)];
    for cond in conds {
        let start = out.len();
        let end = start + cond.len(); // the next condition, or the ret
        for (i, p) in cond.into_iter().enumerate() {
            let here = start + i;
            let resolve = |t: Option<Target>| -> Result<u8, SeccompError> {
                let to = match t {
                    None => here + 1,
                    Some(Target::Next) => end,
                    Some(Target::Fail) => total,
                };
                u8::try_from(to - here - 1).map_err(|_| SeccompError::TooLong)
            };
            let mut ins = p.ins;
            if p.jt.is_some() || p.jf.is_some() {
                ins.jt = resolve(p.jt)?;
                ins.jf = resolve(p.jf)?;
            }
            out.push(ins);
        }
    }
    out.push(stmt(BPF_RET_K, ret));
    Ok(out)
}

/// Compiles `profile` for x86_64.
pub fn compile(profile: &LinuxSeccomp) -> Result<Vec<Instruction>, SeccompError> {
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    let other_abi = RET_ERRNO | libc::EPERM as u32;
    // runc's ENOSYS stub: numbers above the newest call the profile names.
    let newest = profile
        .syscalls()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .flat_map(|c| c.names())
        .filter_map(|n| syscall_number(n))
        .max();
    let denies = !matches!(default & 0xffff_0000, RET_ALLOW | RET_LOG | RET_TRACE);
    let mut out = vec![
        stmt(BPF_LD_W_ABS, OFFSET_ARCH),
        jump(BPF_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(BPF_RET_K, other_abi),
        stmt(BPF_LD_W_ABS, OFFSET_NR),
        jump(BPF_JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET_K, other_abi),
    ];
    if let Some(newest) = newest.filter(|_| denies) {
        out.push(jump(BPF_JGT_K, newest, 0, 1));
        out.push(stmt(BPF_RET_K, RET_ERRNO | libc::ENOSYS as u32));
    }
    for call in profile.syscalls().as_deref().unwrap_or_default() {
        let ret = action(call.action(), call.errno_ret())?;
        if ret == default {
            continue;
        }
        let args: Vec<&LinuxSeccompArg> =
            call.args().as_deref().unwrap_or_default().iter().collect();
        let mut seen = std::collections::HashSet::new();
        let distinct = args.iter().all(|a| seen.insert(a.index()));
        let rules: Vec<Vec<&LinuxSeccompArg>> = if distinct {
            vec![args]
        } else {
            args.into_iter().map(|a| vec![a]).collect()
        };
        for name in call.names() {
            let Some(nr) = syscall_number(name) else {
                if NOT_ON_X86_64.contains(&name.as_str()) {
                    continue;
                }
                return Err(SeccompError::UnknownSyscall(name.clone()));
            };
            for r in &rules {
                out.extend(rule(nr, r, ret)?);
            }
        }
    }
    out.push(stmt(BPF_RET_K, default));
    if out.len() > MAX_INSTRUCTIONS {
        return Err(SeccompError::TooLong);
    }
    Ok(out)
}

/// The seccomp(2) flags a profile asks for.
pub fn flags(profile: &LinuxSeccomp) -> u32 {
    profile
        .flags()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|f| match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG as u32,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW as u32
            }
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => {
                libc::SECCOMP_FILTER_FLAG_TSYNC as u32
            }
        })
        .fold(0, |a, b| a | b)
}

/// `program` as bytes: its `sock_filter` entries in host byte order, 8 bytes each (how a
/// filter travels to a microVM's agent).
pub fn to_bytes(program: &[Instruction]) -> Vec<u8> {
    let mut out = Vec::with_capacity(program.len() * 8);
    for i in program {
        out.extend_from_slice(&i.code.to_ne_bytes());
        out.push(i.jt);
        out.push(i.jf);
        out.extend_from_slice(&i.k.to_ne_bytes());
    }
    out
}

/// Installs `program` on the calling thread (seccomp(2), SECCOMP_SET_MODE_FILTER). The
/// caller has no_new_privs set or CAP_SYS_ADMIN.
pub fn install(program: &[Instruction], flags: u32) -> std::io::Result<()> {
    #[repr(C)]
    struct Program {
        len: u16,
        filter: *const Instruction,
    }
    let prog = Program {
        len: u16::try_from(program.len()).map_err(|_| std::io::Error::other("filter too long"))?,
        filter: program.as_ptr(),
    };
    // SAFETY: `prog` points at `program`, which outlives the call; the kernel copies it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &prog as *const Program,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the BPF program on a seccomp_data (nr, arch, args) like the kernel would.
    fn run(prog: &[Instruction], nr: u32, arch: u32, args: [u64; 6]) -> u32 {
        let mut data = Vec::new();
        data.extend(nr.to_le_bytes());
        data.extend(arch.to_le_bytes());
        data.extend(0u64.to_le_bytes());
        for a in args {
            data.extend(a.to_le_bytes());
        }
        let word = |off: u32| {
            let o = off as usize;
            u32::from_le_bytes([data[o], data[o + 1], data[o + 2], data[o + 3]])
        };
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = prog[pc];
            pc += 1;
            match i.code {
                BPF_LD_W_ABS => acc = word(i.k),
                BPF_ALU_AND_K => acc &= i.k,
                BPF_RET_K => return i.k,
                BPF_JEQ_K | BPF_JGT_K | BPF_JGE_K => {
                    let hit = match i.code {
                        BPF_JEQ_K => acc == i.k,
                        BPF_JGT_K => acc > i.k,
                        _ => acc >= i.k,
                    };
                    pc += usize::from(if hit { i.jt } else { i.jf });
                }
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    fn profile(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).expect("profile")
    }

    #[test]
    fn names_resolve_to_x86_64_numbers() {
        assert_eq!(syscall_number("read"), Some(0));
        assert_eq!(syscall_number("unshare"), Some(272));
        assert_eq!(syscall_number("clone3"), Some(435));
        assert_eq!(syscall_number("no_such_call"), None);
    }

    #[test]
    fn the_first_matching_rule_decides_and_conditions_compare_64_bits() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":38,
                "syscalls":[
                  {"names":["read","write"],"action":"SCMP_ACT_ALLOW"},
                  {"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":8,"op":"SCMP_CMP_EQ"}]},
                  {"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":4294967295,"op":"SCMP_CMP_EQ"}]},
                  {"names":["clone"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":2114060288,"valueTwo":0,"op":"SCMP_CMP_MASKED_EQ"}]},
                  {"names":["kill"],"action":"SCMP_ACT_ERRNO","errnoRet":1,"args":[{"index":1,"value":9,"op":"SCMP_CMP_NE"}]},
                  {"names":["kill"],"action":"SCMP_ACT_ALLOW"},
                  {"names":["lseek"],"action":"SCMP_ACT_ALLOW","args":[{"index":2,"value":4294967296,"op":"SCMP_CMP_GE"}]},
                  {"names":["mmap"],"action":"SCMP_ACT_ALLOW","args":[{"index":1,"value":4096,"op":"SCMP_CMP_LT"}]},
                  {"names":["futex"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":5,"op":"SCMP_CMP_GT"},{"index":0,"value":2,"op":"SCMP_CMP_LE"}]}
                ]}"#,
        );
        let prog = compile(&p).expect("compile");
        let x = AUDIT_ARCH_X86_64;
        let nr = |n| syscall_number(n).expect("known");
        let enosys = RET_ERRNO | 38;
        assert_eq!(run(&prog, nr("read"), x, [0; 6]), RET_ALLOW);
        assert_eq!(run(&prog, nr("write"), x, [0; 6]), RET_ALLOW);
        assert_eq!(run(&prog, nr("unshare"), x, [0; 6]), enosys);
        assert_eq!(
            run(&prog, nr("personality"), x, [8, 0, 0, 0, 0, 0]),
            RET_ALLOW
        );
        assert_eq!(
            run(&prog, nr("personality"), x, [0xffff_ffff, 0, 0, 0, 0, 0]),
            RET_ALLOW
        );
        // Same low word, different high word: no match.
        assert_eq!(
            run(&prog, nr("personality"), x, [(1 << 32) | 8, 0, 0, 0, 0, 0]),
            enosys
        );
        // clone without namespace flags is allowed; with CLONE_NEWUSER it is not.
        assert_eq!(
            run(&prog, nr("clone"), x, [0x0001_1200, 0, 0, 0, 0, 0]),
            RET_ALLOW
        );
        assert_eq!(
            run(&prog, nr("clone"), x, [0x1000_0000, 0, 0, 0, 0, 0]),
            enosys
        );
        // kill: any signal but 9 gets EPERM from the first rule; 9 falls to the second.
        assert_eq!(
            run(&prog, nr("kill"), x, [1, 15, 0, 0, 0, 0]),
            RET_ERRNO | 1
        );
        assert_eq!(run(&prog, nr("kill"), x, [1, 9, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(
            run(&prog, nr("lseek"), x, [0, 0, 1 << 32, 0, 0, 0]),
            RET_ALLOW
        );
        assert_eq!(
            run(&prog, nr("lseek"), x, [0, 0, 0xffff_ffff, 0, 0, 0]),
            enosys
        );
        assert_eq!(run(&prog, nr("mmap"), x, [0, 4095, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(run(&prog, nr("mmap"), x, [0, 4096, 0, 0, 0, 0]), enosys);
        assert_eq!(run(&prog, nr("mmap"), x, [0, 1 << 32, 0, 0, 0, 0]), enosys);
        // Two conditions on one argument: either allows (runc makes two rules).
        assert_eq!(run(&prog, nr("futex"), x, [6, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(run(&prog, nr("futex"), x, [2, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(run(&prog, nr("futex"), x, [4, 0, 0, 0, 0, 0]), enosys);
        // Calls newer than any the profile names: ENOSYS, so libc falls back.
        assert_eq!(run(&prog, 999, x, [0; 6]), RET_ERRNO | libc::ENOSYS as u32);
        let fchmodat2 = nr("fchmodat2");
        assert_eq!(
            run(&prog, fchmodat2, x, [0; 6]),
            RET_ERRNO | libc::ENOSYS as u32
        );
        // Other ABIs are refused outright.
        assert_eq!(run(&prog, 0, 0x4000_0003, [0; 6]), RET_ERRNO | 1);
        assert_eq!(run(&prog, X32_SYSCALL_BIT, x, [0; 6]), RET_ERRNO | 1);
    }

    #[test]
    fn unknown_calls_are_left_to_the_runtime() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["not_a_call"],"action":"SCMP_ACT_ERRNO"}]}"#,
        );
        assert_eq!(
            compile(&p),
            Err(SeccompError::UnknownSyscall("not_a_call".into()))
        );
        // i386-only calls mean nothing on x86_64 and are skipped, as libseccomp does.
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["stime","vm86","umount","mount"],"action":"SCMP_ACT_ERRNO"}]}"#,
        );
        let prog = compile(&p).expect("compile");
        let mount = syscall_number("mount").expect("mount");
        assert_eq!(run(&prog, mount, AUDIT_ARCH_X86_64, [0; 6]), RET_ERRNO | 1);
    }

    #[test]
    fn user_notification_is_left_to_the_runtime() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_NOTIFY"}]}"#,
        );
        assert!(matches!(compile(&p), Err(SeccompError::Action(_))));
    }
}
