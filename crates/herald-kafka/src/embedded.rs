//! An embedded Kafka-protocol cluster for local runs: librdkafka's mock
//! cluster hosted in-process on loopback ports, so `herald dev` needs nothing
//! installed. It supports produce, fetch, consumer groups and transactions;
//! it has no compaction and no persistence, and it is gone when the process
//! exits.

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use crate::topology::Topology;

/// A running embedded cluster.
pub struct EmbeddedCluster {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl EmbeddedCluster {
    /// Starts a cluster of `brokers` brokers on loopback.
    pub fn start(brokers: i32) -> Result<Self, rdkafka::error::KafkaError> {
        Ok(Self {
            cluster: MockCluster::new(brokers)?,
        })
    }

    /// The bootstrap address list.
    pub fn bootstrap(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// Creates a topic (the mock cluster has no CreateTopics API).
    pub fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication: i32,
    ) -> Result<(), rdkafka::error::KafkaError> {
        self.cluster.create_topic(name, partitions, replication)
    }

    /// Creates every topic of `topology`, with replication capped at the broker count.
    pub fn create_topology(
        &self,
        topology: &Topology,
        brokers: i32,
    ) -> Result<usize, rdkafka::error::KafkaError> {
        for spec in topology.topics() {
            self.create_topic(
                &spec.name,
                spec.partitions,
                spec.replication_factor.min(brokers),
            )?;
        }
        Ok(topology.topics().len())
    }

    /// The mock cluster itself, for fault injection in tests.
    pub fn mock(&self) -> &MockCluster<'static, DefaultProducerContext> {
        &self.cluster
    }
}
