//! The phases operators see on `VpcIPClaim` and `VpcIP` objects and on
//! `NodeEniConfig`'s ENIs, as types: every decision on a phase matches one
//! of these. The objects carry them as strings, so that an object written
//! by a newer agent with a phase this one does not know reads as `None`
//! (and is left alone) instead of failing a whole watch.

macro_rules! phases {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// Every phase, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The phase as the objects and `kubectl` show it.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => stringify!($variant)),+
                }
            }

            /// The phase a string names; `None` for one this agent does
            /// not know.
            pub fn of(s: &str) -> Option<$name> {
                $name::ALL.iter().copied().find(|p| p.as_str() == s)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl From<$name> for String {
            fn from(p: $name) -> String {
                p.as_str().to_string()
            }
        }
    };
}

phases! {
    /// A static IP claim's phase (`VpcIPClaim.status.phase`).
    ClaimPhase {
        /// A sandbox of the pod holds the address.
        Bound,
        /// The pod has ended; the address is kept for it.
        Reserved,
        /// The address is gone from the cloud; the claim says why.
        Lost,
        /// Taken over by a node that is moving the address to itself.
        Moving,
        /// Taken over by another node; the address is still on this one.
        Leaving,
    }
}

phases! {
    /// A VPC address's phase (`VpcIP.spec.phase`).
    IpPhase {
        /// The fence a node created on an address a pod asked for, before
        /// the cloud was asked for it.
        Requested,
        /// A pod holds it.
        Bound,
        /// A static claim keeps it for its pod.
        Reserved,
        /// Its ENI is not attached yet (or cannot be: the error says why).
        Attaching,
    }
}

phases! {
    /// An ENI's state in `NodeEniConfig.status.enis`.
    EniState {
        /// Created or attaching, not serving yet.
        Attaching,
        /// Attached and serving.
        Attached,
    }
}

impl ClaimPhase {
    /// Whether the address is held for the pod in this phase (a claim
    /// that pins its pod's zone).
    pub const fn holds_address(self) -> bool {
        matches!(
            self,
            ClaimPhase::Bound | ClaimPhase::Reserved | ClaimPhase::Moving
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_phase_reads_back_and_unknown_ones_are_none() {
        for p in ClaimPhase::ALL {
            assert_eq!(ClaimPhase::of(p.as_str()), Some(*p));
        }
        for p in IpPhase::ALL {
            assert_eq!(IpPhase::of(&p.to_string()), Some(*p));
        }
        assert_eq!(ClaimPhase::of("Migrating"), None);
        assert_eq!(
            ClaimPhase::of("bound"),
            None,
            "case matters, as in the objects"
        );
        assert_eq!(String::from(EniState::Attached), "Attached");
    }
}
