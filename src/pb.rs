//! The generated gRPC API, compiled from `proto/` by `build.rs`.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// `switchyard.agent.v1`: the agent's node controller and process control.
pub mod agent {
    /// Version 1 of the agent API.
    pub mod v1 {
        tonic::include_proto!("switchyard.agent.v1");
    }
}

/// `switchyard.master.v1`: the master's admin API, node heartbeats and events.
pub mod master {
    /// Version 1 of the master API.
    pub mod v1 {
        tonic::include_proto!("switchyard.master.v1");
    }
}

/// The encoded `FileDescriptorSet` of every proto file (with source info, so reflection clients
/// see the comments), including the well-known types it imports.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/switchyard_descriptor.bin"));

/// Fully-qualified names of the master's gRPC services (the agents' two services are served as
/// the gateway to every node).
pub const MASTER_SERVICES: &[&str] = &[
    "switchyard.master.v1.WebClusterService",
    "switchyard.master.v1.RouterClusterService",
    "switchyard.master.v1.NodeService",
    "switchyard.master.v1.EventService",
    "switchyard.master.v1.ControlPlaneService",
    "switchyard.agent.v1.NodeControllerService",
    "switchyard.agent.v1.NativeProcessService",
];

/// Fully-qualified names of the agent's gRPC services.
pub const AGENT_SERVICES: &[&str] = &[
    "switchyard.agent.v1.NodeControllerService",
    "switchyard.agent.v1.NativeProcessService",
];
