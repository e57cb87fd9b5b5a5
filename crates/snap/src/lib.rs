//! Snapshots of a volume on plain S3: point-in-time, read-only copies of the whole volume,
//! taken in one small PUT, paid for by at most one server-side copy per block written after.
//!
//! # What is on the server
//!
//! The live volume keeps upstream's object format exactly (block objects `<prefix>[hash-]NNNNNNNN`,
//! the mount token), so C s3backer still mounts it. Everything about snapshots lives in objects
//! of its own beside it, under the same prefix, which no block key can be confused with (block
//! keys are hex digits; these start with `s3backer-`), and which C s3backer never lists:
//!
//! - `s3backer-snapshots` — the index: each snapshot's id, name, time, geometry and state, the
//!   next id, a generation counter, and the *writer mark* (see below). Text; see [`mod@format`].
//! - `s3backer-snap/<id>/<block>` — snapshot `id`'s preserved copy of a block: a server-side
//!   copy of the block's object as it was stored (encoded: compressed and/or encrypted, with its
//!   `Content-Encoding` and HMAC headers), or an **empty** object when the block was all zeros
//!   (a stored block is never empty, so the two cannot be confused).
//! - `s3backer-snapmap/<id>` — the list of the blocks snapshot `id` preserved, saved so that
//!   mounts and views never need a LIST. The copies themselves are the truth; a saved map may
//!   only *lack* entries, and only in the two cases recovery handles (a crashed writer, a
//!   crashed deletion).
//!
//! The codec binds a block's object to its block number (the IV is derived from the number and
//! the HMAC covers it), not to its key: a copy read back *as block n* decodes exactly as the
//! original. So views read copies through the ordinary codec with the block's own number, and
//! snapshots of encrypted or compressed volumes stay encrypted or compressed, bit for bit.
//! [`book::create`] checks once per snapshot that the server's CopyObject keeps the body, the
//! `Content-Encoding` header and the `x-amz-meta-*` header (Garage and s3s-fs do), and refuses to
//! take a snapshot where it does not.
//!
//! # Copy on first write
//!
//! Snapshots `S1 … Sk` (oldest first). Only the newest, `Sk`, is ever added to: before the first
//! PUT or DELETE of block `n` after `Sk` was taken, [`LiveStore`] copies the stored object of
//! `n` to `Sk`'s copy (CopyObject; an empty object if `n` has none). Then the write goes ahead.
//! A block already in `Sk`'s map is written with no extra request. Reads of the live volume
//! cost nothing extra ever. The index is read at a mount's first write, not when the stack is
//! built: only then does the mount hold the volume (its mount token), so that no snapshot can
//! be taken between the read and the writes; a volume without snapshots pays that one GET.
//!
//! **Chain rule.** Block `n` of snapshot `Si` is the first copy of `n` among `Si, Si+1, …, Sk`,
//! else the live block. Because `n` was copied into `Sj` at its first write after `Sj` was taken,
//! the first such copy holds `n`'s content from before any write since `Si`; no copy at all
//! means `n` was not written since `Si`. Zero blocks at snapshot time need nothing at snapshot
//! time: their first write stores an empty copy, which reads as zeros.
//!
//! **Changed blocks.** The blocks written since `Si` are exactly the union of the maps of
//! `Si … Sk`, so `--listSnapshots` counts them without reading the volume.
//!
//! # Deleting a snapshot
//!
//! Deleting `Si` with next older snapshot `Sh`: `Sh` reads `n` from `Si` when it has no copy of
//! its own, so each such copy is copied (server-side) to `Sh` first, then `Sh`'s map is saved,
//! then `Si`'s copies, map and index entry are deleted. What no older snapshot needs is freed.
//! The newest snapshot can be deleted too; the next older one becomes the one written into.
//!
//! # Crash safety (kill -9 at any point)
//!
//! Every step is one S3 request, each atomic on the server, in an order that keeps every
//! snapshot readable after any prefix of them; a later mount or command finishes the rest:
//!
//! - **Taking a snapshot** is one index PUT. Before it, nothing changed; after it, the snapshot
//!   exists. The preparation before it (recovery, a copy probe) is idempotent.
//! - **First write of a block**: the copy (or empty copy) is made, and only when it succeeded
//!   does the live write go out. A crash between the two leaves the copy, which is right (it
//!   holds the block from before the write, which did not happen). The map is saved later
//!   (at every flush of the whole volume: fsync, unmount), so a crash can leave copies the map
//!   lacks. Hence the **writer mark**: before its first copy a mount writes its session number
//!   into the index, and clears it only after saving the map, with no copy in progress. A
//!   command or mount that holds the volume and finds another session's mark knows that
//!   session crashed and rebuilds the newest map from a LIST of its copies ([`book::recover`],
//!   and the first write of a mount). This is the only LIST outside the bookkeeping commands,
//!   and it only happens after a crash.
//! - **Deleting**: the snapshot is first marked `deleting` in the index. Every later step is
//!   redone from the copies on the server (both snapshots' copies are LISTed): hand-on copies
//!   are idempotent and their sources stay until the older snapshot's map is saved; deletes of
//!   missing objects succeed. Recovery finishes any marked deletion.
//!
//! Concurrent readers ([`SnapshotView`], a read-only mount of a snapshot beside the live
//! mount) see a consistent snapshot without any lock: a block the maps they read hold is read
//! from its copy (a copy gone missing means a deletion handed it on: the maps are read again);
//! any other block is read live, then the index is read again: a changed generation means the
//! snapshots or the writer changed (read again); an unchanged one without a writer mark means
//! no copy was made since the maps were read, so the live block is still the snapshot's; with
//! a writer mark, the newest snapshot's copy is looked up, which exists if the live block was
//! changed before it was read (the writer copies before it writes).
//!
//! # What the server must provide
//!
//! PUT, GET, DELETE and CopyObject (with `x-amz-metadata-directive: COPY` keeping
//! `Content-Encoding` and `x-amz-meta-*`); LIST only for `--listSnapshots` while a mount is
//! writing, for recovery after a crash, and for deletions. No versioning, no conditional
//! writes. Taking, deleting and mounting snapshots require holding the volume (its mount
//! token), so no other writer runs meanwhile; a mounted volume's snapshots are taken and deleted
//! by the mount itself ([`LiveStore::snapshot`], [`LiveStore::delete_snapshot`], asked through
//! its daemon's control socket), which holds its own writes at a gate meanwhile: no write is
//! half done when the index changes, and every later write goes by the new index. Such a
//! snapshot is the volume exactly as the server held it at the index PUT.

#![forbid(unsafe_code)]

mod ahead;
pub mod book;
mod error;
pub mod format;
mod live;
mod view;

pub use ahead::PreserveAhead;
pub use error::SnapError;
pub use live::{LiveStore, layer};
pub use view::SnapshotView;

/// Requests a bookkeeping step keeps in flight at once.
pub const CONCURRENCY: usize = 32;

#[cfg(test)]
mod tests;
