//! Container events, stats and metrics through the real crispd, runc and a busybox image.

mod common;

use std::time::Duration;

use common::workload::*;
use cri_proto::v1 as cri;
use tokio_stream::StreamExt;

type EventStream = tonic::Streaming<cri::ContainerEventResponse>;

/// The next event, or a failure after 20 s.
async fn next_event(events: &mut EventStream) -> cri::ContainerEventResponse {
    tokio::time::timeout(Duration::from_secs(20), events.next())
        .await
        .expect("an event within 20s")
        .expect("the stream goes on")
        .expect("an event, not an error")
}

fn kind(e: &cri::ContainerEventResponse) -> cri::ContainerEventType {
    cri::ContainerEventType::try_from(e.container_event_type).expect("known type")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_follow_each_lifecycle_in_order_exactly_once() {
    use cri::ContainerEventType::*;
    let s = setup();
    let daemon = s.net.sandbox.start();
    let (mut rt, pod) = ready(&s, &daemon).await;
    let mut events = rt
        .get_container_events(cri::GetEventsRequest {})
        .await
        .expect("subscribe")
        .into_inner();
    // A second subscriber sees the same events.
    let mut other = rt
        .get_container_events(cri::GetEventsRequest {})
        .await
        .expect("subscribe")
        .into_inner();

    // One that exits on its own with code 3.
    let quick = create(
        &mut rt,
        &s,
        &pod,
        container(&s, "quick", "sleep 0.3; exit 3"),
    )
    .await;
    rt.start_container(cri::StartContainerRequest {
        container_id: quick.clone(),
    })
    .await
    .expect("start");
    let mut seen = Vec::new();
    for _ in 0..3 {
        let e = next_event(&mut events).await;
        assert_eq!(e.container_id, quick);
        seen.push(kind(&e));
        if kind(&e) == ContainerStoppedEvent {
            let own = e
                .containers_statuses
                .iter()
                .find(|c| c.id == quick)
                .expect("the event carries the container's status");
            assert_eq!(own.exit_code, 3);
            assert_eq!(own.state, i32::from(cri::ContainerState::ContainerExited));
            let pod_status = e.pod_sandbox_status.as_ref().expect("pod status");
            assert_eq!(pod_status.id, pod);
        }
        assert!(e.created_at > 0);
    }
    assert_eq!(
        seen,
        [
            ContainerCreatedEvent,
            ContainerStartedEvent,
            ContainerStoppedEvent
        ]
    );

    // One stopped by StopContainer, then both removed.
    let long = create(&mut rt, &s, &pod, container(&s, "long", "sleep 300")).await;
    rt.start_container(cri::StartContainerRequest {
        container_id: long.clone(),
    })
    .await
    .expect("start");
    rt.stop_container(cri::StopContainerRequest {
        container_id: long.clone(),
        timeout: 1,
    })
    .await
    .expect("stop");
    for id in [&quick, &long] {
        rt.remove_container(cri::RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("remove");
    }
    let mut rest = Vec::new();
    for _ in 0..5 {
        let e = next_event(&mut events).await;
        rest.push((e.container_id.clone(), kind(&e)));
    }
    assert_eq!(
        rest,
        [
            (long.clone(), ContainerCreatedEvent),
            (long.clone(), ContainerStartedEvent),
            (long.clone(), ContainerStoppedEvent),
            (quick.clone(), ContainerDeletedEvent),
            (long.clone(), ContainerDeletedEvent),
        ]
    );
    // Nothing more: no second STOPPED for either.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), events.next())
            .await
            .is_err(),
        "no further events"
    );
    let mut all = Vec::new();
    for _ in 0..8 {
        all.push(kind(&next_event(&mut other).await));
    }
    assert_eq!(all.len(), 8);
    teardown(&mut rt).await;
}
