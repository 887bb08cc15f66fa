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

#[test]
fn a_replacement_is_one_transaction_that_drops_then_builds_the_table() {
    let b = replace_batch(100, &[(0x0a00_0000, 0x0a00_ffff)]);
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
            nft(NFT_MSG_NEWSET),
            nft(NFT_MSG_NEWSETELEM),
            nft(NFT_MSG_NEWRULE),
            NFNL_MSG_BATCH_END,
        ]
    );
    assert_eq!(
        b.acked,
        (101..108).collect::<Vec<u32>>(),
        "every message is acknowledged"
    );
    assert!(m[1..8].iter().all(|(_, f, _)| f & NLM_F_ACK != 0));
    // The chain: nat at postrouting, priority srcnat.
    assert!(parse_chain(&m[4].2).is_ours());
    // The elements: 10.0.0.0 and the end 10.1.0.0.
    assert_eq!(
        parse_elements(&m[6].2),
        vec![(0x0a00_0000, false), (0x0a01_0000, true)]
    );
    // The rule reads back as it was written.
    assert_eq!(parse_rule(&m[7].2), masquerade_rule());
    assert_eq!(
        find(&m[1].2, NFTA_TABLE_NAME).map(string).as_deref(),
        Some(TABLE)
    );
}

#[test]
fn removal_tolerates_a_missing_table() {
    let m = messages(&remove_batch(1));
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
    let text: Vec<String> = masquerade_rule().iter().map(Expr::to_string).collect();
    assert_eq!(text[0], "meta iifgroup");
    assert_eq!(text[3], "!= @non-masquerade");
}
