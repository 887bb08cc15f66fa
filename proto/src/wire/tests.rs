//! The protocol's unit tests, with frozen fixtures of protocol 1.

use super::*;

fn key() -> AttachmentKey {
    AttachmentKey {
        network: "vpc".into(),
        container_id: "c1".into(),
        ifname: "eth0".into(),
    }
}

fn all_requests() -> Vec<Request> {
    vec![
        Request::Add(AddRequest {
            key: key(),
            netns: "/var/run/netns/p1".into(),
            pod: Some(PodRef {
                namespace: "default".into(),
                name: "web-0".into(),
                uid: None,
            }),
            deadline_ms: Some(1),
            static_ip: Some(StaticIpRequest {
                expire_after_ms: Some(3_600_000),
                owner: Some(OwnerRef {
                    kind: "StatefulSet".into(),
                    name: "db".into(),
                    uid: "u".into(),
                }),
                requested_ip: None,
            }),
        }),
        Request::Del(DelRequest {
            key: key(),
            netns: None,
        }),
        Request::Check(CheckRequest {
            key: key(),
            netns: "/n".into(),
            expected_addresses: vec!["10.0.0.5/32".into()],
        }),
        Request::Gc(GcRequest {
            network: "vpc".into(),
            valid: vec![GcAttachment {
                container_id: "c1".into(),
                ifname: "eth0".into(),
            }],
        }),
        Request::Status,
        Request::Pool,
        Request::Claims,
        Request::DeleteClaim {
            namespace: "default".into(),
            name: "web-0".into(),
            force: true,
        },
        Request::Reclaim { dry_run: true },
        Request::OwnerDeleted(OwnerRef {
            kind: "StatefulSet".into(),
            name: "db".into(),
            uid: "u".into(),
        }),
    ]
}

#[test]
fn every_request_round_trips() {
    for r in all_requests() {
        let bytes = encode_request(&r).expect("encode");
        assert_eq!(
            decode_request(&bytes).expect("decode"),
            Incoming {
                version: PROTOCOL_VERSION,
                request: r
            }
        );
    }
}

#[test]
fn replies_round_trip() {
    let replies: Vec<Reply> = vec![
        Ok(Response::Added(AddReply {
            ip: Ipv4Addr::new(10, 0, 1, 5),
            gateway: Ipv4Addr::new(169, 254, 1, 1),
            host_ifname: "vpc0123456789a".into(),
            host_mac: "02:00:00:00:00:01".into(),
            pod_mac: "02:00:00:00:00:02".into(),
            mtu: 1500,
            eni_id: "eni-1".into(),
            ipv6: None,
            gateway_v6: None,
        })),
        Ok(Response::Added(AddReply {
            ip: Ipv4Addr::new(10, 0, 1, 6),
            gateway: Ipv4Addr::new(169, 254, 1, 1),
            host_ifname: "vpc0123456789b".into(),
            host_mac: "02:00:00:00:00:03".into(),
            pod_mac: "02:00:00:00:00:04".into(),
            mtu: 1500,
            eni_id: "eni-1".into(),
            ipv6: Some("fd00::6".parse().expect("an address")),
            gateway_v6: Some("fe80::1".parse().expect("an address")),
        })),
        Ok(Response::Deleted),
        Ok(Response::Collected { released: 3 }),
        Ok(Response::Status(StatusReply {
            ready: false,
            reason: Some("x".into()),
        })),
        Ok(Response::Pool(PoolView {
            enis: vec![EniView {
                id: "eni-1".into(),
                mac: "m".into(),
                subnet_id: "s".into(),
                ips: vec![
                    IpView {
                        ip: Ipv4Addr::new(10, 0, 0, 1),
                        ipv6: None,
                        state: IpState::Free,
                    },
                    IpView {
                        ip: Ipv4Addr::new(10, 0, 0, 2),
                        ipv6: Some("fd00::2".parse().expect("v6")),
                        state: IpState::Allocated {
                            key: key(),
                            pod: None,
                        },
                    },
                    IpView {
                        ip: Ipv4Addr::new(10, 0, 0, 3),
                        ipv6: None,
                        state: IpState::Cooling { until_ms: 5 },
                    },
                ],
            }],
            conditions: vec![ConditionView {
                kind: "ENILimit".into(),
                message: "quota".into(),
                since_ms: 1,
            }],
            maintenance: None,
        })),
        Err(AgentError::new(ErrorKind::NoIpAvailable, "empty")),
    ];
    for r in replies {
        let bytes = encode_reply(&r, PROTOCOL_VERSION).expect("encode");
        assert_eq!(decode_reply(&bytes).expect("decode"), r);
    }
}

#[test]
fn malformed_requests_are_refused() {
    for bad in [
        &b""[..],
        b"null",
        b"{}",
        b"{\"version\":1}",
        b"{\"version\":2,\"request\":{\"op\":\"add\"}}",
        b"{\"version\":2,\"request\":{\"op\":7}}",
        b"{\"version\":2,\"request\":{\"op\":\"del\",\"key\":{\"network\":\"n\"}}}",
        b"\xff\xfe",
    ] {
        assert!(
            matches!(decode_request(bad), Err(WireError::Malformed(_))),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn requests_outside_the_window_get_a_typed_error_naming_both_versions() {
    let newer = decode_request(br#"{"version":3,"request":{"op":"status","new":true}}"#)
        .expect_err("too new");
    assert!(matches!(newer, WireError::RequestVersion { got: 3 }));
    let text = newer.to_string();
    assert!(
        text.contains("plugin speaks protocol 3")
            && text.contains("agent serves 1..2")
            && text.contains("upgrade the agent"),
        "{text}"
    );
    let older = decode_request(br#"{"version":0,"request":{"op":"status"}}"#).expect_err("old");
    assert!(older.to_string().contains("upgrade the plugin"), "{older}");
}

#[test]
fn unknown_verbs_get_a_typed_error_naming_both_versions() {
    for version in [OLDEST_SERVED, PROTOCOL_VERSION] {
        let frame = format!(r#"{{"version":{version},"request":{{"op":"explode","x":1}}}}"#);
        let err = decode_request(frame.as_bytes()).expect_err("unknown verb");
        assert!(
            matches!(&err, WireError::UnknownVerb { op, version: v } if op == "explode" && *v == version),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains(&format!("protocol {version}")) && text.contains("protocol 2"),
            "{text}"
        );
    }
}

#[test]
fn every_verb_is_known() {
    let ops: std::collections::BTreeSet<String> = all_requests()
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::to_value(r).expect("json");
            v["op"].as_str().expect("op").to_string()
        })
        .collect();
    let known: std::collections::BTreeSet<String> = VERBS.iter().map(|v| v.to_string()).collect();
    assert_eq!(ops, known);
}

#[test]
fn unknown_fields_are_ignored_both_ways() {
    let request = decode_request(
        br#"{"version":2,"new":1,"request":{"op":"del","later":[],"key":{"network":"n","container_id":"c","ifname":"e","x":1}}}"#,
    )
    .expect("tolerated");
    assert!(matches!(request.request, Request::Del(_)));
    let reply =
        decode_reply(br#"{"version":2,"new":1,"ok":{"kind":"status","ready":true,"since_ms":5}}"#)
            .expect("tolerated");
    assert_eq!(
        reply,
        Ok(Response::Status(StatusReply {
            ready: true,
            reason: None
        }))
    );
}

/// What a protocol 1 plugin (every plugin before this rule) sends, as it
/// encodes it: frozen, one per verb in the order of [`all_requests`].
const V1_REQUESTS: &str = include_str!("fixtures/v1-requests.jsonl");
/// What a protocol 1 agent answers, byte for byte: the only replies a
/// protocol 1 plugin can read (it refuses other versions and unknown
/// fields), in the order of [`v1_replies`].
const V1_REPLIES: &str = include_str!("fixtures/v1-replies.jsonl");

fn v1_replies() -> Vec<Reply> {
    vec![
        Ok(Response::Added(AddReply {
            ip: Ipv4Addr::new(10, 0, 1, 5),
            gateway: Ipv4Addr::new(169, 254, 1, 1),
            host_ifname: "vpc0123456789a".into(),
            host_mac: "02:00:00:00:00:01".into(),
            pod_mac: "02:00:00:00:00:02".into(),
            mtu: 1500,
            eni_id: "eni-1".into(),
            ipv6: None,
            gateway_v6: None,
        })),
        Ok(Response::Deleted),
        Ok(Response::Checked),
        Ok(Response::Collected { released: 3 }),
        Ok(Response::Status(StatusReply {
            ready: false,
            reason: Some("x".into()),
        })),
        Ok(Response::Status(StatusReply {
            ready: true,
            reason: None,
        })),
        Err(AgentError::new(ErrorKind::NoIpAvailable, "empty")),
        Err(AgentError::new(
            ErrorKind::Protocol,
            "protocol version 2 is not supported (this side speaks 1)",
        )),
    ]
}

#[test]
fn protocol_1_requests_are_served_and_answered_in_protocol_1() {
    let expected = all_requests();
    let lines: Vec<&str> = V1_REQUESTS.lines().collect();
    assert_eq!(lines.len(), expected.len());
    for (line, request) in lines.into_iter().zip(expected) {
        let got = decode_request(line.as_bytes()).expect(line);
        assert_eq!(
            got,
            Incoming {
                version: 1,
                request
            },
            "{line}"
        );
        assert_eq!(answer_version(line.as_bytes()), 1);
    }
}

#[test]
fn replies_to_protocol_1_are_exactly_what_a_protocol_1_plugin_reads() {
    let lines: Vec<&str> = V1_REPLIES.lines().collect();
    let replies = v1_replies();
    assert_eq!(lines.len(), replies.len());
    for (line, reply) in lines.into_iter().zip(replies) {
        let ours: serde_json::Value =
            serde_json::from_slice(&encode_reply(&reply, 1).expect("encode")).expect("json");
        let frozen: serde_json::Value = serde_json::from_str(line).expect("fixture");
        assert_eq!(ours, frozen);
    }
}

#[test]
fn a_reply_of_the_next_version_is_read() {
    let reply = decode_reply(
        br#"{"version":3,"ok":{"kind":"added","ip":"10.0.1.5","gateway":"169.254.1.1","host_ifname":"vpc0123456789a","host_mac":"m1","pod_mac":"m2","mtu":1500,"eni_id":"eni-1","next_field":"fd00::5"}}"#,
    )
    .expect("N+1 is accepted");
    assert!(matches!(reply, Ok(Response::Added(a)) if a.eni_id == "eni-1"));
}

#[test]
fn an_agent_outside_the_window_is_named_with_what_it_said() {
    let old_agent = V1_REPLIES.lines().last().expect("fixture");
    let err = decode_reply(old_agent.as_bytes()).expect_err("protocol 1 agent");
    let text = err.to_string();
    assert!(
        text.contains("agent speaks protocol 1")
            && text.contains("accepts 2..3")
            && text.contains("upgrade the agent")
            && text.contains("this side speaks 1"),
        "{text}"
    );
    let newer = decode_reply(br#"{"version":4,"ok":{"kind":"deleted"}}"#).expect_err("too new");
    assert!(newer.to_string().contains("upgrade the plugin"), "{newer}");
}

#[test]
fn oversized_frames_are_refused_before_reading() {
    let header = ((MAX_FRAME + 1) as u32).to_be_bytes();
    assert!(matches!(parse_header(header), Err(WireError::TooLarge(_))));
    let mut input = std::io::Cursor::new(header.to_vec());
    assert!(matches!(
        read_frame(&mut input),
        Err(WireError::TooLarge(_))
    ));
    assert!(frame_header(MAX_FRAME + 1).is_err());
}

#[test]
fn frames_round_trip_through_io() {
    let mut buf = Vec::new();
    write_frame(&mut buf, b"hello").expect("write");
    assert_eq!(
        read_frame(&mut std::io::Cursor::new(buf)).expect("read"),
        b"hello"
    );
}

#[test]
fn truncated_frames_are_io_errors() {
    let mut buf = Vec::new();
    write_frame(&mut buf, b"hello").expect("write");
    buf.truncate(6);
    assert!(matches!(
        read_frame(&mut std::io::Cursor::new(buf)),
        Err(WireError::Io(_))
    ));
}

#[test]
fn every_error_kind_maps_to_a_documented_code() {
    use ErrorKind::*;
    for kind in [
        Protocol,
        InvalidRequest,
        PermissionDenied,
        NoIpAvailable,
        UnknownAttachment,
        Mismatch,
        Dataplane,
        Store,
        Cloud,
        EniLimit,
        NotReady,
        Internal,
    ] {
        let code = kind.cni_code();
        assert!(
            code < 100 || (100..=108).contains(&code),
            "{kind:?} -> {code}"
        );
    }
}

#[test]
fn error_kinds_a_peer_does_not_know_are_downgraded_or_read_as_unknown() {
    let lost: Reply = Err(AgentError::new(
        ErrorKind::ClaimLost,
        "the static IP is lost",
    ));
    let v1: serde_json::Value =
        serde_json::from_slice(&encode_reply(&lost, 1).expect("encode")).expect("json");
    assert_eq!(
        v1["error"]["kind"], "cloud",
        "protocol 1 has no claim_lost: {v1}"
    );
    let v2: serde_json::Value =
        serde_json::from_slice(&encode_reply(&lost, 2).expect("encode")).expect("json");
    assert_eq!(v2["error"]["kind"], "claim_lost");
    let newer = decode_reply(br#"{"version":3,"error":{"kind":"some_future_kind","message":"m"}}"#)
        .expect("N+1 is accepted");
    let e = newer.expect_err("an error");
    assert_eq!(e.kind, ErrorKind::Unknown);
    assert_eq!(e.kind.cni_code(), crate::cni::error::codes::AGENT_INTERNAL);
}

#[test]
fn a_requested_claim_is_shown_to_protocol_1_without_the_field_it_does_not_know() {
    let claim = ClaimView {
        namespace: "default".into(),
        name: "web-0".into(),
        ip: Ipv4Addr::new(10, 0, 20, 7),
        ipv6: Some("fd00::7".parse().expect("v6")),
        status: "Bound".into(),
        node: "ins-1".into(),
        subnet_id: "subnet-1".into(),
        eni_id: "eni-1".into(),
        container_id: None,
        policy: "Never".into(),
        owner: None,
        created_ms: 1,
        last_bound_ms: 1,
        released_ms: None,
        expires_ms: None,
        expire_after_ms: None,
        message: None,
        requested: true,
    };
    let reply: Reply = Ok(Response::Claims {
        claims: vec![claim],
    });
    let v1: serde_json::Value =
        serde_json::from_slice(&encode_reply(&reply, 1).expect("encode")).expect("json");
    assert!(v1["ok"]["claims"][0].get("requested").is_none(), "{v1}");
    assert!(v1["ok"]["claims"][0].get("ipv6").is_none(), "{v1}");
    assert_eq!(v1["ok"]["claims"][0]["ip"], "10.0.20.7");
    let v2 = encode_reply(&reply, 2).expect("encode");
    assert_eq!(decode_reply(&v2).expect("decode"), reply);
}

/// A frame goes out in one write: a header written on its own wakes the
/// blocked reader, which then sleeps again until the payload comes (two
/// wake-ups per message, measurable on every CNI call).
#[test]
fn a_frame_is_written_in_one_call() {
    struct Writes(Vec<Vec<u8>>);
    impl std::io::Write for Writes {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut w = Writes(Vec::new());
    write_frame(&mut w, b"hello").expect("write");
    assert_eq!(w.0, vec![frame(b"hello").expect("frame")]);
    assert_eq!(&w.0[0][4..], b"hello");
}
