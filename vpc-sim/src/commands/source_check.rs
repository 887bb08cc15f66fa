//! `vpc-sim source-check`: what the VPC's source/destination check caught
//! in a running simulation, and switching it on or off.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use vpc_sim::fabric::router_link;
use vpc_sim::world::SharedWorld;

use super::up::world_file;

/// On or off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    /// Drop what leaves an ENI from an address it does not hold.
    On,
    /// Only count it.
    Off,
}

/// Flags of `source-check`.
#[derive(Debug, Args)]
pub struct SourceCheckArgs {
    /// The directory given to `up`.
    #[arg(long)]
    pub state: PathBuf,
    /// Switch the check on or off (else only print what it caught).
    pub switch: Option<Switch>,
}

/// Runs `source-check`: prints one line per (ENI, source) caught, with the
/// ENI's id, node and device, and the packets sent to addresses no ENI holds.
pub fn run(args: SourceCheckArgs) -> Result<(), String> {
    let world = SharedWorld::at(&world_file(&args.state))
        .read()
        .map_err(|e| e.to_string())?;
    let fabric = world
        .fabric
        .as_ref()
        .ok_or("this simulation has no fabric")?;
    if let Some(switch) = args.switch {
        fabric
            .set_source_check(switch == Switch::On)
            .map_err(|e| e.to_string())?;
    }
    let enforcing = fabric.source_check().map_err(|e| e.to_string())?;
    let spoofed = fabric.spoofed().map_err(|e| e.to_string())?;
    let unheld = fabric.unheld().map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "source/destination check: {}",
        if enforcing {
            "on (dropping)"
        } else {
            "off (counting only)"
        }
    );
    for s in &spoofed {
        let eni = world.vpc.enis.values().find(|e| router_link(e) == s.link);
        let who = eni
            .map(|e| {
                format!(
                    "{} ({} eth{})",
                    e.id,
                    e.attached_to.as_deref().unwrap_or("detached"),
                    e.device_index.unwrap_or(0)
                )
            })
            .unwrap_or_else(|| format!("link {} (ENI gone)", s.link));
        let _ = writeln!(
            out,
            "{who} sent {} packets from {}, which it does not hold",
            s.packets, s.source
        );
    }
    let _ = writeln!(
        out,
        "{} packets from ENIs with a source they do not hold; {unheld} packets to addresses no ENI holds",
        spoofed.iter().map(|s| s.packets).sum::<u64>()
    );
    Ok(())
}
