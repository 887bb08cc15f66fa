//! The agent is SIGKILLed twice in the middle of 200 interleaved ADD/DEL
//! calls made through the real plugin by 8 concurrent "kubelets" that retry
//! failed calls, as kubelet does. After restarts on the same state: no IP is
//! held twice, every answered ADD still holds its IP, every answered DEL
//! stays released.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::wire::{IpState, PoolView};
use vpc_cni_tests::{Agent, CniEnv, cni, pod_address};

const CONTAINERS: usize = 120;
const WORKERS: usize = 8;
const KILL_AFTER: [usize; 2] = [60, 130];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Add,
    Del,
}

/// Each container is ADDed; two of every three are then DELeted: 200 calls.
fn script() -> Vec<Vec<(usize, Op)>> {
    let mut per_worker: Vec<Vec<Vec<(usize, Op)>>> = vec![Vec::new(); WORKERS];
    for c in 0..CONTAINERS {
        let mut ops = vec![(c, Op::Add)];
        if c % 3 != 0 {
            ops.push((c, Op::Del));
        }
        per_worker[c % WORKERS].push(ops);
    }
    // Interleave each worker's containers pseudo-randomly, keeping each
    // container's own order.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    per_worker
        .into_iter()
        .map(|mut queues| {
            let mut out = Vec::new();
            while queues.iter().any(|q| !q.is_empty()) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let live: Vec<usize> = (0..queues.len())
                    .filter(|i| !queues[*i].is_empty())
                    .collect();
                let q = live[(seed % live.len() as u64) as usize];
                out.push(queues[q].remove(0));
            }
            out
        })
        .collect()
}

fn allocations(view: &PoolView) -> Vec<(String, String)> {
    view.enis
        .iter()
        .flat_map(|e| &e.ips)
        .filter_map(|ip| match &ip.state {
            IpState::Allocated { key, .. } => {
                Some((key.container_id.clone(), format!("{}/32", ip.ip)))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn kill_9_during_interleaved_add_del_loses_nothing() {
    let agent = Agent::start_with(
        &["--max-enis", "8", "--ips-per-eni", "30"],
        &["--warm-ip-target", "8"],
    );
    let conf = serde_json::to_vec(&agent.conf("1.0.0")).expect("conf");
    let netns: Vec<String> = (0..CONTAINERS)
        .map(|c| agent.netns(&format!("c{c}")))
        .collect();
    let script = script();
    assert_eq!(script.iter().map(Vec::len).sum::<usize>(), 200);

    let agent = Mutex::new(agent);
    let done = AtomicUsize::new(0);
    let failures = AtomicUsize::new(0);
    let added: Arc<Mutex<BTreeMap<usize, String>>> = Arc::default();
    let deleted: Arc<Mutex<BTreeSet<usize>>> = Arc::default();
    let mut kills_at = Vec::new();

    std::thread::scope(|s| {
        for ops in &script {
            let (conf, netns, done, failures) = (&conf, &netns, &done, &failures);
            let (added, deleted) = (Arc::clone(&added), Arc::clone(&deleted));
            s.spawn(move || {
                for (c, op) in ops {
                    let verb = if *op == Op::Add { "ADD" } else { "DEL" };
                    let env = CniEnv::pod(verb, &format!("c{c}"), &netns[*c]);
                    let mut tries = 0;
                    let run = loop {
                        let run = cni(&env, conf);
                        if run.ok {
                            break run;
                        }
                        assert_eq!(
                            run.code(),
                            11,
                            "only 'try again later' is expected: {}",
                            run.stdout
                        );
                        failures.fetch_add(1, Ordering::SeqCst);
                        tries += 1;
                        assert!(tries < 500, "{verb} c{c} never succeeded");
                        std::thread::sleep(Duration::from_millis(10));
                    };
                    match op {
                        Op::Add => {
                            let ip = pod_address(&run.json());
                            added.lock().expect("lock").insert(*c, ip);
                        }
                        Op::Del => {
                            added.lock().expect("lock").remove(c);
                            deleted.lock().expect("lock").insert(*c);
                        }
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        for at in KILL_AFTER {
            while done.load(Ordering::SeqCst) < at {
                std::thread::sleep(Duration::from_millis(1));
            }
            let mut a = agent.lock().expect("agent");
            kills_at.push(done.load(Ordering::SeqCst));
            a.kill9();
            std::thread::sleep(Duration::from_millis(100));
            a.spawn();
        }
    });

    let mut agent = agent.into_inner().expect("agent");
    assert!(
        kills_at.iter().all(|k| *k < 200),
        "kills happened mid-run: {kills_at:?}"
    );
    assert!(
        failures.load(Ordering::SeqCst) > 0,
        "some calls met a dead agent"
    );

    let added = added.lock().expect("lock").clone();
    let deleted = deleted.lock().expect("lock").clone();
    assert_eq!(added.len(), CONTAINERS / 3);
    assert_eq!(deleted.len(), CONTAINERS - CONTAINERS / 3);
    let replied: BTreeSet<&String> = added.values().collect();
    assert_eq!(
        replied.len(),
        added.len(),
        "two live containers were answered with one IP"
    );

    let expected: BTreeMap<String, String> = added
        .iter()
        .map(|(c, ip)| (format!("c{c}"), ip.clone()))
        .collect();
    for round in ["after the run", "after one more kill -9 and restart"] {
        let held = allocations(&agent.pool());
        let holders: BTreeSet<&String> = held.iter().map(|(c, _)| c).collect();
        assert_eq!(
            holders.len(),
            held.len(),
            "{round}: a container holds two IPs"
        );
        let ips: BTreeSet<&String> = held.iter().map(|(_, ip)| ip).collect();
        assert_eq!(ips.len(), held.len(), "{round}: an IP is held twice");
        let held: BTreeMap<String, String> = held.into_iter().collect();
        assert_eq!(
            held, expected,
            "{round}: every answered ADD holds its IP and every answered DEL is released"
        );
        agent.kill9();
        agent.spawn();
    }
    let restarts = agent.log().matches("pool restored").count();
    assert_eq!(
        restarts,
        1 + KILL_AFTER.len() + 2,
        "every start restored the pool"
    );
}
