//! The agent protocol (crisp.agent.v1): every message either decodes or is refused, and a
//! decoded message encodes back to one that decodes the same. The host decodes the
//! responses from a guest it does not trust; the agent decodes the requests.
#![no_main]

use agent_proto as proto;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn check<M: Message + Default + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
    let Ok(message) = M::decode(bytes) else {
        return;
    };
    let again = M::decode(message.encode_to_vec().as_slice());
    assert_eq!(again.as_ref().ok(), Some(&message));
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 20 {
        0 => check::<proto::HelloResponse>(bytes),
        1 => check::<proto::StartContainerResponse>(bytes),
        2 => check::<proto::ExitInfo>(bytes),
        3 => check::<proto::ContainerStatusResponse>(bytes),
        4 => check::<proto::ExecSyncResponse>(bytes),
        5 => check::<proto::Empty>(bytes),
        6 => check::<proto::SetupSandboxRequest>(bytes),
        7 => check::<proto::CreateContainerRequest>(bytes),
        8 => check::<proto::ContainerId>(bytes),
        9 => check::<proto::KillRequest>(bytes),
        10 => check::<proto::ExecSyncRequest>(bytes),
        11 => check::<proto::ReopenLogRequest>(bytes),
        12 => check::<proto::HelloRequest>(bytes),
        13 => check::<proto::Process>(bytes),
        // The streaming calls: what the host decodes from the guest, then the rest.
        14 => check::<proto::ExecOutput>(bytes),
        15 => check::<proto::PortData>(bytes),
        16 => check::<proto::ExecInput>(bytes),
        17 => check::<proto::AttachInput>(bytes),
        18 => check::<proto::Security>(bytes),
        _ => check::<proto::TerminalSize>(bytes),
    }
});
