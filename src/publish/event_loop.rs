//! The event-loop task: the one place rumqttc's [`EventLoop`] is polled. It never exits on an
//! error: a failed connect or a broken connection is logged (rate-limited), and polling goes on
//! after a backoff, which reconnects. It beats its heartbeat ([`Publisher::beat`], stage `mqtt`)
//! on every event and every second while it waits, so a task that ended or a runtime that no
//! longer runs it stops the systemd watchdog.
//!
//! [`Publisher::beat`]: super::Publisher::beat

use std::sync::Weak;
use std::time::{Duration, Instant};

use rumqttc::{
    ConnectReturnCode, ConnectionError, Event, EventLoop, Outgoing, Packet, PubAck, PubComp, PubRec,
};
use tokio_util::sync::CancellationToken;

use super::flow::{LOG_EVERY, Shared};
use crate::backoff::Backoff;
use crate::health::Beat;

/// First delay after a failed connect; doubled per failure up to `reconnect_max_s`.
const BACKOFF_START: Duration = Duration::from_millis(100);
/// Each reconnect delay is shortened by up to this fraction at random, so that many clients
/// of a restarted broker do not all come back at the same instant.
const BACKOFF_JITTER: f64 = 0.25;
/// A connection that lasted this long resets the backoff when it breaks.
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// How often the task beats while it waits (a poll that has nothing yet, a reconnect delay).
const IDLE_BEAT: Duration = Duration::from_secs(1);

/// Polls forever, reconnecting with a capped exponential backoff, until shutdown sent
/// DISCONNECT, `stop` is cancelled or the last handle is gone. Beats `beat` on every event
/// and every [`IDLE_BEAT`] while it waits (the pending poll is kept, never restarted).
pub(super) async fn run(
    shared: Weak<Shared>,
    stop: CancellationToken,
    mut eventloop: EventLoop,
    reconnect_max: Duration,
    broker: String,
    beat: Beat,
) {
    let mut backoff =
        Backoff::new(BACKOFF_START.min(reconnect_max), reconnect_max).jitter(BACKOFF_JITTER);
    let mut errors = ErrorLog {
        broker,
        ..ErrorLog::default()
    };
    let mut connected_at: Option<Instant> = None;
    let mut idle = tokio::time::interval(IDLE_BEAT);
    idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    'events: loop {
        beat.beat();
        let polled = {
            let poll = eventloop.poll();
            tokio::pin!(poll);
            loop {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => break 'events,
                    polled = &mut poll => break polled,
                    _ = idle.tick() => beat.beat(),
                }
            }
        };
        let Some(shared) = shared.upgrade() else {
            break;
        };
        match polled {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                errors.connected();
                connected_at = Some(Instant::now());
                shared.on_connect();
            }
            Ok(Event::Incoming(Packet::PubAck(PubAck { pkid, .. })))
            | Ok(Event::Incoming(Packet::PubComp(PubComp { pkid, .. }))) => {
                shared.acknowledged(pkid)
            }
            Ok(Event::Incoming(Packet::PubRec(PubRec { pkid, .. }))) => shared.received(pkid),
            Ok(Event::Incoming(Packet::Publish(publish))) => shared.incoming(publish),
            // Pairs a message handed over with its packet id (QoS 0: done once written).
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => shared.numbered(pkid),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                if shared.on_disconnect_sent() {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                shared.on_connection_error(&mut eventloop, &e);
                drop(shared);
                if connected_at
                    .take()
                    .is_some_and(|t| t.elapsed() >= STABLE_AFTER)
                {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                errors.failed(&e, delay);
                let retry = tokio::time::sleep(delay);
                tokio::pin!(retry);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break 'events,
                        () = &mut retry => break,
                        _ = idle.tick() => beat.beat(),
                    }
                }
            }
        }
    }
    if let Some(shared) = shared.upgrade() {
        shared.on_stopped();
    }
}

/// Rate-limits connection error logs: the first failure in a row is logged, then at most one
/// line per [`LOG_EVERY`] with the count; the rest go to DEBUG.
#[derive(Debug, Default)]
struct ErrorLog {
    /// `host:port`, for the operator reading the log.
    broker: String,
    failures: u64,
    last_logged: Option<Instant>,
}

impl ErrorLog {
    fn failed(&mut self, error: &ConnectionError, retry_in: Duration) {
        self.failures += 1;
        let due = self.last_logged.is_none_or(|t| t.elapsed() >= LOG_EVERY);
        let retry_ms = retry_in.as_millis() as u64;
        if !due {
            tracing::debug!(broker = %self.broker, %error, failures = self.failures, retry_ms, "MQTT connection failed");
            return;
        }
        self.last_logged = Some(Instant::now());
        if operator_must_act(error) {
            tracing::error!(
                broker = %self.broker,
                %error,
                failures = self.failures,
                retry_ms,
                "MQTT broker refuses this client; check credentials and TLS settings"
            );
        } else {
            tracing::warn!(broker = %self.broker, %error, failures = self.failures, retry_ms, "MQTT connection failed; retrying");
        }
    }

    fn connected(&mut self) {
        if self.failures > 0 {
            tracing::info!(broker = %self.broker, failures = self.failures, "MQTT connected again");
        } else {
            tracing::info!(broker = %self.broker, "MQTT connected");
        }
        self.failures = 0;
        self.last_logged = None;
    }
}

/// Errors that retrying will not fix by itself.
fn operator_must_act(error: &ConnectionError) -> bool {
    matches!(
        error,
        ConnectionError::ConnectionRefused(
            ConnectReturnCode::BadUserNamePassword
                | ConnectReturnCode::NotAuthorized
                | ConnectReturnCode::BadClientId
                | ConnectReturnCode::RefusedProtocolVersion
        ) | ConnectionError::Tls(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_refusals_need_an_operator() {
        assert!(operator_must_act(&ConnectionError::ConnectionRefused(
            ConnectReturnCode::NotAuthorized
        )));
        assert!(!operator_must_act(&ConnectionError::NetworkTimeout));
    }
}
