//! `affectd check`: can the broker be reached with this configuration?

use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Outgoing, Packet};

use super::MqttConfig;
use super::publisher::{Error, mqtt_options};

/// Why the broker could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Config(#[from] Error),
    #[error("{broker}: {error}")]
    Connect { broker: String, error: String },
    #[error("{broker}: no CONNACK within {} ms", timeout.as_millis())]
    Timeout { broker: String, timeout: Duration },
}

/// Connects once with the configured address, credentials and TLS, waits for the broker's
/// CONNACK and disconnects; returns how long the connect took. The client id is the daemon's
/// with `-check` appended (so a running daemon is not kicked off) and no last will is set.
pub async fn probe(
    config: &MqttConfig,
    node: &str,
    timeout: Duration,
) -> Result<Duration, ProbeError> {
    let options = mqtt_options(
        config,
        format!("{}-check", config.client_id_for(node)),
        None,
    )?;
    let broker = format!("{}:{}", config.host, config.port);
    let (client, mut eventloop) = AsyncClient::new(options, 4);
    let start = Instant::now();
    let connected = tokio::time::timeout(timeout, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(start.elapsed()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    let took = match connected {
        Ok(Ok(took)) => took,
        Ok(Err(e)) => {
            return Err(ProbeError::Connect {
                broker,
                error: e.to_string(),
            });
        }
        Err(_) => return Err(ProbeError::Timeout { broker, timeout }),
    };
    // Say goodbye properly; the probe succeeded either way.
    if client.try_disconnect().is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Ok(event) = eventloop.poll().await {
                if event == Event::Outgoing(Outgoing::Disconnect) {
                    break;
                }
            }
        })
        .await;
    }
    Ok(took)
}
