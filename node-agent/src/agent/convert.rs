//! The wire protocol's identities to the pool's and back: the pool never
//! sees a wire type.

use proto::wire;

use crate::ipam::{AttachmentKey, OwnerRef, PodRef};

/// A wire attachment key as the pool's.
pub fn key(k: &wire::AttachmentKey) -> AttachmentKey {
    AttachmentKey {
        network: k.network.clone(),
        container_id: k.container_id.clone(),
        ifname: k.ifname.clone(),
    }
}

/// The pool's attachment key on the wire.
pub fn wire_key(k: &AttachmentKey) -> wire::AttachmentKey {
    wire::AttachmentKey {
        network: k.network.clone(),
        container_id: k.container_id.clone(),
        ifname: k.ifname.clone(),
    }
}

/// A wire pod reference as the pool's.
pub fn pod(p: &wire::PodRef) -> PodRef {
    PodRef {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        uid: p.uid.clone(),
    }
}

/// The pool's pod reference on the wire.
pub fn wire_pod(p: &PodRef) -> wire::PodRef {
    wire::PodRef {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        uid: p.uid.clone(),
    }
}

/// A wire owner reference as the pool's.
pub fn owner(o: &wire::OwnerRef) -> OwnerRef {
    OwnerRef {
        kind: o.kind.clone(),
        name: o.name.clone(),
        uid: o.uid.clone(),
    }
}

/// The pool's owner reference on the wire.
pub fn wire_owner(o: &OwnerRef) -> wire::OwnerRef {
    wire::OwnerRef {
        kind: o.kind.clone(),
        name: o.name.clone(),
        uid: o.uid.clone(),
    }
}
