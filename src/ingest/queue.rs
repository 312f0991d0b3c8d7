//! Bounded per-camera frame queues and the hub one consumer thread waits on.
//!
//! The producer is a GStreamer streaming thread: it must never block and memory must never
//! grow, so a full queue drops its *oldest* frame (the analytics want the freshest picture) and
//! counts the drop. The consumer waits on a shared doorbell rung by every push, then drains all
//! cameras.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use parking_lot::{Condvar, Mutex};

use crate::types::{CameraId, Frame};

/// Rung by producers after each push; one consumer waits on it.
#[derive(Debug, Default)]
struct Doorbell {
    rung: Mutex<bool>,
    cond: Condvar,
}

impl Doorbell {
    fn ring(&self) {
        *self.rung.lock() = true;
        self.cond.notify_all();
    }

    /// Waits until rung or `timeout`; clears the bell. True when it was rung.
    fn wait(&self, timeout: Duration) -> bool {
        let mut rung = self.rung.lock();
        if !*rung {
            let _ = self.cond.wait_for(&mut rung, timeout);
        }
        std::mem::replace(&mut *rung, false)
    }
}

/// One camera's bounded drop-oldest queue of frames.
#[derive(Debug)]
pub struct FrameQueue {
    frames: ArrayQueue<Frame>,
    delivered: AtomicU64,
    dropped: AtomicU64,
    bell: Arc<Doorbell>,
}

impl FrameQueue {
    fn new(capacity: usize, bell: Arc<Doorbell>) -> FrameQueue {
        FrameQueue {
            frames: ArrayQueue::new(capacity.max(1)),
            delivered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            bell,
        }
    }

    /// Adds a frame without ever blocking; when full, the oldest frame is dropped and counted.
    pub(crate) fn push(&self, frame: Frame) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        if self.frames.force_push(frame).is_some() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.bell.ring();
    }

    /// The oldest queued frame, if any.
    pub fn pop(&self) -> Option<Frame> {
        self.frames.pop()
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.frames.capacity()
    }

    /// Frames pushed so far (every pipeline run of the camera): what left its decoder.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Frames dropped so far because the consumer was slower than the camera.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The consumer side of all cameras' queues: wait once, then drain every camera.
///
/// Cheap to clone; meant for ONE consumer thread (two would steal each other's wake-ups).
#[derive(Debug, Clone)]
pub struct FrameHub {
    queues: Arc<[(CameraId, Arc<FrameQueue>)]>,
    bell: Arc<Doorbell>,
}

/// Builds a [`FrameHub`] and hands out its per-camera queues.
#[derive(Debug)]
pub(crate) struct HubBuilder {
    queues: Vec<(CameraId, Arc<FrameQueue>)>,
    bell: Arc<Doorbell>,
    capacity: usize,
}

impl HubBuilder {
    pub(crate) fn new(capacity: usize) -> HubBuilder {
        HubBuilder {
            queues: Vec::new(),
            bell: Arc::default(),
            capacity,
        }
    }

    pub(crate) fn queue(&mut self, camera: CameraId) -> Arc<FrameQueue> {
        let queue = Arc::new(FrameQueue::new(self.capacity, self.bell.clone()));
        self.queues.push((camera, queue.clone()));
        queue
    }

    pub(crate) fn build(self) -> FrameHub {
        FrameHub {
            queues: self.queues.into(),
            bell: self.bell,
        }
    }
}

impl FrameHub {
    /// Waits until some camera pushed a frame since the last call, or `timeout` passed.
    /// True when woken by a frame. Frames pushed before the call return at once.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.bell.wait(timeout)
    }

    /// Moves every queued frame of every camera into `out` (oldest first per camera) and
    /// returns how many were added.
    pub fn drain_into(&self, out: &mut Vec<Frame>) -> usize {
        let before = out.len();
        for (_, queue) in self.queues.iter() {
            while let Some(frame) = queue.pop() {
                out.push(frame);
            }
        }
        out.len() - before
    }

    /// [`wait_timeout`](Self::wait_timeout) then [`drain_into`](Self::drain_into) a new vector;
    /// empty after a timeout with nothing queued.
    pub fn next_batch(&self, timeout: Duration) -> Vec<Frame> {
        let mut frames = Vec::new();
        if self.drain_into(&mut frames) == 0 {
            self.wait_timeout(timeout);
            self.drain_into(&mut frames);
        }
        frames
    }

    /// The cameras and their queues, in start order.
    pub fn queues(&self) -> &[(CameraId, Arc<FrameQueue>)] {
        &self.queues
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Instant, SystemTime};

    use super::*;

    fn frame(camera: &CameraId, seq: u64) -> Frame {
        Frame {
            camera: camera.clone(),
            seq,
            pts: None,
            wall: SystemTime::now(),
            width: 1,
            height: 1,
            rgb: Arc::from(&[0u8, 0, 0][..]),
        }
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts() {
        let cam: CameraId = "a".into();
        let mut b = HubBuilder::new(3);
        let q = b.queue(cam.clone());
        for seq in 0..5 {
            q.push(frame(&cam, seq));
        }
        assert_eq!(q.len(), 3);
        assert_eq!(q.delivered(), 5);
        assert_eq!(q.dropped(), 2);
        let seqs: Vec<_> = std::iter::from_fn(|| q.pop()).map(|f| f.seq).collect();
        assert_eq!(seqs, [2, 3, 4]);
        assert!(q.is_empty());
    }

    #[test]
    fn the_hub_drains_every_camera_after_one_wake_up() {
        let (a, b): (CameraId, CameraId) = ("a".into(), "b".into());
        let mut builder = HubBuilder::new(4);
        let qa = builder.queue(a.clone());
        let qb = builder.queue(b.clone());
        let hub = builder.build();
        assert!(!hub.wait_timeout(Duration::from_millis(10)));
        qa.push(frame(&a, 0));
        qb.push(frame(&b, 0));
        qb.push(frame(&b, 1));
        assert!(hub.wait_timeout(Duration::from_secs(1)));
        let mut out = Vec::new();
        assert_eq!(hub.drain_into(&mut out), 3);
        let got: Vec<_> = out.iter().map(|f| (&*f.camera, f.seq)).collect();
        assert_eq!(got, [("a", 0), ("b", 0), ("b", 1)]);
        assert!(!hub.wait_timeout(Duration::from_millis(10)));
    }

    #[test]
    fn a_waiting_consumer_wakes_when_another_thread_pushes() {
        let cam: CameraId = "a".into();
        let mut builder = HubBuilder::new(2);
        let q = builder.queue(cam.clone());
        let hub = builder.build();
        let producer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            q.push(frame(&cam, 7));
        });
        let t0 = Instant::now();
        let batch = hub.next_batch(Duration::from_secs(5));
        producer.join().unwrap();
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].seq, 7);
        assert!(t0.elapsed() < Duration::from_secs(4));
    }
}
