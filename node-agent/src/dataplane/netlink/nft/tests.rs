//! The nftables messages, decoded by their own decoders.

use super::encode::{Attrs, message, nft};
use super::*;

/// The message payloads (attributes) of a batch, with their types.
fn messages(b: &Batch) -> Vec<(u16, u16, Vec<u8>)> {
    let mut out = Vec::new();
    let mut buf = b.bytes();
    while buf.len() >= 16 {
        let len = u32_ne(&buf[0..4]) as usize;
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        let flags = u16::from_ne_bytes([buf[6], buf[7]]);
        out.push((kind, flags, buf[20..len].to_vec()));
        buf = &buf[len..];
    }
    assert!(buf.is_empty(), "messages fill the batch exactly");
    out
}

fn masquerading() -> TableSpec {
    TableSpec::new("eth0", 0x80, Some(vec![(0x0a00_0000, 0x0a00_ffff)]))
}

#[test]
fn a_replacement_is_one_transaction_that_drops_then_builds_the_table() {
    let spec = masquerading();
    let b = replace_batch(100, &spec, FAMILY_IP);
    let m = messages(&b);
    let kinds: Vec<u16> = m.iter().map(|(k, _, _)| *k).collect();
    assert_eq!(
        kinds,
        vec![
            NFNL_MSG_BATCH_BEGIN,
            nft(NFT_MSG_NEWTABLE),
            nft(NFT_MSG_DELTABLE),
            nft(NFT_MSG_NEWTABLE),
            nft(NFT_MSG_NEWCHAIN),
            nft(NFT_MSG_NEWCHAIN),
            nft(NFT_MSG_NEWSET),
            nft(NFT_MSG_NEWSETELEM),
            nft(NFT_MSG_NEWRULE),
            nft(NFT_MSG_NEWRULE),
            nft(NFT_MSG_NEWRULE),
            NFNL_MSG_BATCH_END,
        ]
    );
    assert_eq!(
        b.acked,
        (101..111).collect::<Vec<u32>>(),
        "every message is acknowledged"
    );
    assert!(m[1..11].iter().all(|(_, f, _)| f & NLM_F_ACK != 0));
    // The chains: filter at prerouting -155, nat at postrouting srcnat.
    let prerouting = parse_chain(&m[4].2);
    assert_eq!(
        prerouting,
        ChainInfo {
            kind: "filter".into(),
            hook: Some(0),
            priority: Some(-155)
        }
    );
    assert!(spec.chains[0].hooked_as(&prerouting));
    assert!(spec.chains[1].hooked_as(&parse_chain(&m[5].2)));
    assert!(!spec.chains[1].hooked_as(&prerouting));
    // The elements: 10.0.0.0 and the end 10.1.0.0.
    assert_eq!(
        parse_elements(&m[7].2),
        vec![(0x0a00_0000, false), (0x0a01_0000, true)]
    );
    // Each rule reads back as it was written, in its chain.
    for (msg, (chain, rule)) in m[8..11].iter().zip([
        (CONNMARK_CHAIN, &spec.chains[0].rules[0]),
        (CONNMARK_CHAIN, &spec.chains[0].rules[1]),
        (CHAIN, &spec.chains[1].rules[0]),
    ]) {
        assert_eq!(parse_rule(&msg.2), rule.exprs, "{}", rule.text);
        assert_eq!(
            find(&msg.2, NFTA_RULE_CHAIN).map(string).as_deref(),
            Some(chain)
        );
    }
    assert_eq!(
        find(&m[1].2, NFTA_TABLE_NAME).map(string).as_deref(),
        Some(TABLE)
    );
}

#[test]
fn without_masquerade_the_table_holds_only_the_connmark_chain() {
    let spec = TableSpec::new("eth0", 0x80, None);
    let m = messages(&replace_batch(1, &spec, FAMILY_IP));
    let kinds: Vec<u16> = m.iter().map(|(k, _, _)| *k).collect();
    assert_eq!(
        kinds,
        vec![
            NFNL_MSG_BATCH_BEGIN,
            nft(NFT_MSG_NEWTABLE),
            nft(NFT_MSG_DELTABLE),
            nft(NFT_MSG_NEWTABLE),
            nft(NFT_MSG_NEWCHAIN),
            nft(NFT_MSG_NEWRULE),
            nft(NFT_MSG_NEWRULE),
            NFNL_MSG_BATCH_END,
        ]
    );
    assert_eq!(
        find(&m[4].2, NFTA_CHAIN_NAME).map(string).as_deref(),
        Some(CONNMARK_CHAIN)
    );
}

/// Every expression through the encoder and back.
fn round_trip(e: &Expr) -> Expr {
    let mut list = Attrs::default();
    list.nest(NFTA_LIST_ELEM, |el| expr::encode(el, e));
    let mut rule = Attrs::default();
    rule.put(NFTA_RULE_EXPRESSIONS | NLA_F_NESTED, &list.0);
    let mut decoded = parse_rule(&rule.0);
    assert_eq!(decoded.len(), 1);
    decoded.remove(0)
}

#[test]
fn every_expression_round_trips_through_the_decoder() {
    let all = [
        TableSpec::new("ens5", 0x100, Some(vec![(1, 2)])),
        TableSpec::new("eth0", 0x80, None),
    ];
    let mut seen = std::collections::HashSet::new();
    for spec in &all {
        for rule in spec.chains.iter().flat_map(|c| &c.rules) {
            for e in &rule.exprs {
                assert_eq!(&round_trip(e), e, "{}", rule.text);
                seen.insert(std::mem::discriminant(e));
            }
        }
    }
    // meta, meta set, ct, ct set, bitwise, fib, cmp, payload, lookup, masq.
    assert_eq!(seen.len(), 10, "every kind we write is covered");
    // What we do not write stays known by name.
    assert_eq!(
        round_trip(&Expr::Other("counter".into())),
        Expr::Other("counter".into())
    );
}

#[test]
fn the_mark_rule_matches_new_local_connections_on_the_primary_and_sets_only_our_bit() {
    let rule = mark_rule("eth0", 0x80);
    assert_eq!(
        rule.text,
        "iifname \"eth0\" ct state new fib daddr type local ct mark set ct mark | 0x00000080"
    );
    let e = &rule.exprs;
    // The name over all 16 bytes of IFNAMSIZ, zero-padded.
    assert_eq!(
        e[1],
        Expr::Cmp {
            sreg: 1,
            op: NFT_CMP_EQ,
            data: b"eth0\0\0\0\0\0\0\0\0\0\0\0\0".to_vec()
        }
    );
    // ct state & new != 0.
    assert_eq!(e[2], Expr::Ct { key: 0, dreg: 1 });
    assert!(matches!(&e[3], Expr::Bitwise { mask, xor, .. }
        if *mask == 8u32.to_ne_bytes() && *xor == [0; 4]));
    assert!(matches!(
        &e[4],
        Expr::Cmp {
            op: NFT_CMP_NEQ,
            ..
        }
    ));
    // fib daddr type == local.
    assert_eq!(
        e[5],
        Expr::Fib {
            flags: 2,
            result: 3,
            dreg: 1
        }
    );
    assert!(matches!(&e[6], Expr::Cmp { op: NFT_CMP_EQ, data, .. } if *data == 2u32.to_ne_bytes()));
    // ct mark = (ct mark & !0x80) ^ 0x80: the other bits are kept.
    assert_eq!(e[7], Expr::Ct { key: 3, dreg: 1 });
    assert!(matches!(&e[8], Expr::Bitwise { mask, xor, .. }
        if *mask == (!0x80u32).to_ne_bytes() && *xor == 0x80u32.to_ne_bytes()));
    assert_eq!(e[9], Expr::CtSet { key: 3, sreg: 1 });
    assert_eq!(e.len(), 10);
}

#[test]
fn the_restore_rule_copies_our_bit_only_for_pod_veths() {
    let rule = restore_rule(0x100);
    assert_eq!(
        rule.text,
        "iifgroup 1987076914 ct mark & 0x00000100 == 0x00000100 meta mark set meta mark | 0x00000100"
    );
    let e = &rule.exprs;
    assert_eq!(e[0], Expr::Meta { key: 21, dreg: 1 });
    assert!(matches!(&e[3], Expr::Bitwise { mask, xor, .. }
        if *mask == 0x100u32.to_ne_bytes() && *xor == [0; 4]));
    assert!(
        matches!(&e[4], Expr::Cmp { op: NFT_CMP_EQ, data, .. } if *data == 0x100u32.to_ne_bytes())
    );
    assert_eq!(e[5], Expr::Meta { key: 3, dreg: 1 });
    assert!(matches!(&e[6], Expr::Bitwise { mask, xor, .. }
        if *mask == (!0x100u32).to_ne_bytes() && *xor == 0x100u32.to_ne_bytes()));
    assert_eq!(e[7], Expr::MetaSet { key: 3, sreg: 1 });
}

/// `spec` as the kernel would give it back.
fn read_back(spec: &TableSpec) -> TableState {
    TableState {
        chains: CHAINS
            .iter()
            .map(|name| {
                let state = spec
                    .chains
                    .iter()
                    .find(|c| c.name == *name)
                    .map(|c| ChainState {
                        info: Some(ChainInfo {
                            kind: c.kind.into(),
                            hook: Some(c.hook),
                            priority: Some(c.priority),
                        }),
                        rules: c.rules.iter().map(|r| r.exprs.clone()).collect(),
                    })
                    .unwrap_or_default();
                (*name, state)
            })
            .collect(),
        elements: spec.set.as_deref().map(interval_elements),
    }
}

#[test]
fn the_check_names_a_missing_or_altered_rule_and_a_chain_that_should_not_be() {
    let spec = masquerading();
    assert_eq!(compare(&spec, Some(&read_back(&spec))), Ok(()));
    let e = compare(&spec, None).expect_err("no table");
    assert!(e.contains("table ip vpc-cni does not exist"), "{e}");

    // The restore rule deleted.
    let mut t = read_back(&spec);
    t.chains[0].1.rules.remove(1);
    let e = compare(&spec, Some(&t)).expect_err("restore rule gone");
    assert_eq!(
        e,
        "chain prerouting lacks the rule `iifgroup 1987076914 ct mark & 0x00000080 == 0x00000080 meta mark set meta mark | 0x00000080`"
    );

    // The mark rule for another interface.
    let mut t = read_back(&spec);
    t.chains[0].1.rules[0] = mark_rule("eth1", 0x80).exprs;
    let e = compare(&spec, Some(&t)).expect_err("other interface");
    assert!(e.contains("lacks the rule `iifname \"eth0\""), "{e}");

    // A rule of somebody else's added to our chain.
    let mut t = read_back(&spec);
    t.chains[0]
        .1
        .rules
        .push(vec![Expr::Other("counter".into())]);
    let e = compare(&spec, Some(&t)).expect_err("stray rule");
    assert!(
        e.contains("chain prerouting holds a rule the agent did not write: `counter`"),
        "{e}"
    );

    // The two rules swapped.
    let mut t = read_back(&spec);
    t.chains[0].1.rules.reverse();
    let e = compare(&spec, Some(&t)).expect_err("order");
    assert!(e.contains("in this order"), "{e}");

    // The chain gone, or hooked elsewhere.
    let mut t = read_back(&spec);
    t.chains[0].1 = ChainState::default();
    let e = compare(&spec, Some(&t)).expect_err("chain gone");
    assert_eq!(e, "chain prerouting of table ip vpc-cni is missing");
    let mut t = read_back(&spec);
    if let Some(info) = &mut t.chains[0].1.info {
        info.priority = Some(-150);
    }
    let e = compare(&spec, Some(&t)).expect_err("mangle's priority");
    assert!(
        e.contains("is not type filter hook prerouting priority -155"),
        "{e}"
    );

    // Masquerade off: its chain and set must be gone, the connmark stays.
    let off = TableSpec::new("eth0", 0x80, None);
    assert_eq!(compare(&off, Some(&read_back(&off))), Ok(()));
    let e = compare(&off, Some(&read_back(&spec))).expect_err("masquerade left");
    assert!(
        e.contains("chain postrouting of table ip vpc-cni exists though egress masquerade is off"),
        "{e}"
    );
    let e = compare(&spec, Some(&read_back(&off))).expect_err("masquerade missing");
    assert_eq!(e, "chain postrouting of table ip vpc-cni is missing");

    // Another set.
    let mut t = read_back(&spec);
    t.elements = Some(interval_elements(&[(0x0a00_0000, 0x0a01_ffff)]));
    let e = compare(&spec, Some(&t)).expect_err("set");
    assert_eq!(
        e,
        "set non-masquerade holds {10.0.0.0/15}, expected {10.0.0.0/16}"
    );
}

#[test]
fn removal_tolerates_a_missing_table() {
    let m = messages(&remove_batch(1, FAMILY_IP));
    let kinds: Vec<u16> = m.iter().map(|(k, _, _)| *k).collect();
    assert_eq!(
        kinds,
        vec![
            NFNL_MSG_BATCH_BEGIN,
            nft(NFT_MSG_NEWTABLE),
            nft(NFT_MSG_DELTABLE),
            NFNL_MSG_BATCH_END
        ]
    );
}

#[test]
fn intervals_round_trip_through_elements() {
    let ranges = vec![(0x0a00_0000, 0x0a00_ffff), (0xc0a8_0000, u32::MAX)];
    let el = interval_elements(&ranges);
    assert_eq!(el.len(), 3, "no end past the top of the space");
    let mut shuffled = el.clone();
    shuffled.reverse();
    assert_eq!(element_ranges(&shuffled), Some(ranges));
    // nft's own leading end at 0.0.0.0 is accepted.
    assert_eq!(
        element_ranges(&[(0, true), (5, false), (10, true)]),
        Some(vec![(5, 9)])
    );
    assert_eq!(element_ranges(&[(5, false), (6, false)]), None);
    assert_eq!(element_ranges(&[(7, true)]), None);
}

#[test]
fn kernel_answers_are_split_and_decoded() {
    let mut buf = Vec::new();
    // An error for seq 7 (ENOENT) and a done.
    buf.extend_from_slice(&36u32.to_ne_bytes());
    buf.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
    buf.extend_from_slice(&0u16.to_ne_bytes());
    buf.extend_from_slice(&7u32.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&(-2i32).to_ne_bytes());
    buf.extend_from_slice(&[0u8; 16]);
    let done = message(NLMSG_DONE, NLM_F_MULTI, 8, 0, 0, &Attrs::default());
    buf.extend_from_slice(&done);
    let r = replies(&buf).expect("replies");
    assert_eq!(r[0], Reply::Ack { seq: 7, errno: 2 });
    assert_eq!(r[1], Reply::Done);
    assert!(replies(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
}

#[test]
fn expressions_describe_themselves() {
    let text: Vec<String> = masquerade_rule()
        .exprs
        .iter()
        .map(Expr::to_string)
        .collect();
    assert_eq!(text[0], "meta iifgroup");
    assert_eq!(text[3], "!= @non-masquerade");
    let text: Vec<String> = restore_rule(0x80)
        .exprs
        .iter()
        .map(Expr::to_string)
        .collect();
    assert_eq!(
        text.join(" "),
        "meta iifgroup == 0x76706332 ct mark & 0x00000080 ^ 0x00000000 == 0x00000080 meta mark & 0xffffff7f ^ 0x00000080 meta mark set"
    );
}
