//! COMPARE AND WRITE is one step against every other write of its blocks, from any
//! session (SBC-4 5.3): two initiators race it on one block 10,000 times, a third
//! overwrites that block with plain WRITEs meanwhile and writes the blocks around it.
//! Every write to the block leaves content nobody else writes (a tag, a unique id, a
//! counter, and a fill byte across the whole block), so the history can be rebuilt
//! from what each initiator saw and did, and checked:
//!
//! - no two successful compares found the same content (no lost update);
//! - every successful compare found content that some write left, and the successful
//!   compares form chains that start at the initial block or at a plain WRITE and
//!   together account for every success exactly once (a counter in the block counts
//!   the chain, so the block's counter is the number of successes since that start);
//! - after each plain WRITE of the block, what the third initiator reads back is that
//!   write or a chain of successful compares from it (a compare that read before the
//!   WRITE and wrote after it would break this);
//! - the block ends as the end of one such chain, and every neighbour holds its last write;
//! - every miscompare is MISCOMPARE (1Dh/00h) with the first differing byte in
//!   INFORMATION, and every block read is whole (never a mix of two writes).

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::raw::RawClient;
use common::{TestServer, DEMO_IQN};
use twinlun::iscsi::pdu::Digests;

const BS: usize = 512;
const LUN: u64 = 1;
const CAWS_PER_INITIATOR: u32 = 5_000;
/// The raced block; the third initiator also writes the blocks after it.
const BLOCK: u32 = 8;
const NEIGHBOURS: u32 = 7;

const TAG_COUNT: &[u8; 8] = b"CAWCOUNT";
const TAG_WRITE: &[u8; 8] = b"PLAINWR!";

/// What a block of the race holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Content {
    /// All zeros: the block before the race.
    Initial,
    /// Left by a successful COMPARE AND WRITE: its id and its counter.
    Count { id: u64, counter: u64 },
    /// Left by the third initiator's WRITE.
    Write { id: u64 },
}

impl Content {
    fn encode(self) -> Vec<u8> {
        let (tag, id, counter) = match self {
            Content::Initial => return vec![0; BS],
            Content::Count { id, counter } => (TAG_COUNT, id, counter),
            Content::Write { id } => (TAG_WRITE, id, 0),
        };
        let mut b = vec![fill(id); BS];
        b[0..8].copy_from_slice(tag);
        b[8..16].copy_from_slice(&id.to_be_bytes());
        b[16..24].copy_from_slice(&counter.to_be_bytes());
        b
    }

    /// The content of a block when it is one whole write of the race.
    fn whole(b: &[u8]) -> Option<Content> {
        if b.len() != BS {
            return None;
        }
        if b.iter().all(|&x| x == 0) {
            return Some(Content::Initial);
        }
        let id = u64::from_be_bytes(b[8..16].try_into().ok()?);
        let counter = u64::from_be_bytes(b[16..24].try_into().ok()?);
        let c = match &b[0..8] {
            t if t == TAG_COUNT => Content::Count { id, counter },
            t if t == TAG_WRITE => Content::Write { id },
            _ => return None,
        };
        (c.encode() == b).then_some(c)
    }

    /// Parses a block read back; panics on anything no writer of the race wrote whole.
    fn decode(b: &[u8]) -> Content {
        assert_eq!(b.len(), BS);
        if b.iter().all(|&x| x == 0) {
            return Content::Initial;
        }
        let id = u64::from_be_bytes(b[8..16].try_into().unwrap());
        let counter = u64::from_be_bytes(b[16..24].try_into().unwrap());
        let c = match &b[0..8] {
            t if t == TAG_COUNT => Content::Count { id, counter },
            t if t == TAG_WRITE => Content::Write { id },
            t => panic!("block with an unknown tag {t:02x?}"),
        };
        assert_eq!(
            c.encode(),
            b,
            "a block that is not one whole write (torn or mixed)"
        );
        c
    }
}

/// Fill byte of a block: differs between ids that differ in their low byte.
fn fill(id: u64) -> u8 {
    (id as u8) | 0x01
}

fn read(c: &mut RawClient, lba: u32) -> Vec<u8> {
    c.read10(LUN, lba, 1, BS)
}

/// A racer's READ of the block: a plain READ overlapping the plain writer's WRITE may
/// see part of each (SBC-4 promises atomicity to COMPARE AND WRITE and atomic writes,
/// not to READ against WRITE), so a mixed block is read again. What the racer then
/// compares against is one whole content; a CAW carrying a mixed one would only
/// miscompare anyway.
fn read_whole(c: &mut RawClient, lba: u32) -> Content {
    for _ in 0..1000 {
        let b = read(c, lba);
        if let Some(content) = Content::whole(&b) {
            return content;
        }
    }
    panic!("1000 reads in a row saw a mixed block");
}

/// One COMPARE AND WRITE of one block: true on GOOD, false on MISCOMPARE (checked),
/// panics on anything else.
fn compare_and_write(c: &mut RawClient, lba: u32, expect: &[u8], new: &[u8]) -> bool {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x89;
    cdb[2..10].copy_from_slice(&u64::from(lba).to_be_bytes());
    cdb[13] = 1;
    let mut data = expect.to_vec();
    data.extend_from_slice(new);
    let o = c.scsi(LUN, &cdb, &data, 0);
    if o.status == 0 {
        return true;
    }
    let s = &o.sense;
    assert_eq!(o.status, 0x02, "CAW: status {:#x}", o.status);
    assert_eq!(s[2] & 0x0f, 0x0e, "CAW sense key: {:02x?}", &s[..]);
    assert_eq!(
        (s[12], s[13]),
        (0x1d, 0x00),
        "CAW ASC/ASCQ: {:02x?}",
        &s[..]
    );
    assert_eq!(s[0] & 0x80, 0x80, "INFORMATION is valid: {s:02x?}");
    let info = u32::from_be_bytes(s[3..7].try_into().unwrap()) as usize;
    // Two different contents of the race differ in their tag or their id.
    assert!(info < 16, "first difference at {info}: {s:02x?}");
    false
}

fn login(s: &TestServer, name: &str) -> RawClient {
    let mut c = RawClient::connect(s.addr);
    c.login(
        &format!("iqn.2026-12.test:{name}"),
        DEMO_IQN,
        Digests::default(),
    );
    // The first command of a nexus reports the power-on unit attention.
    c.scsi_good(LUN, &[0, 0, 0, 0, 0, 0], &[], 0);
    c
}

/// What one racing initiator did: (content it expected, content it wrote, succeeded).
type Attempts = Vec<(Content, Content, bool)>;

#[test]
fn compare_and_write_is_atomic_against_every_other_write() {
    let s = TestServer::start();
    s.ctl_ok(&["volume", "create", "race", "--size", "16M"]);
    s.ctl_ok(&["lun", "map", DEMO_IQN, &LUN.to_string(), "race"]);
    let started = std::time::Instant::now();

    let stop = Arc::new(AtomicBool::new(false));
    let racers: Vec<_> = (1..=2u64)
        .map(|who| {
            let mut c = login(&s, &format!("racer{who}"));
            std::thread::spawn(move || {
                let mut done: Attempts = Vec::new();
                for seq in 0..CAWS_PER_INITIATOR {
                    let now = read_whole(&mut c, BLOCK);
                    let counter = match now {
                        Content::Count { counter, .. } => counter + 1,
                        _ => 1,
                    };
                    let new = Content::Count {
                        id: (who << 32) | u64::from(seq),
                        counter,
                    };
                    let ok = compare_and_write(&mut c, BLOCK, &now.encode(), &new.encode());
                    done.push((now, new, ok));
                }
                done
            })
        })
        .collect();
    let writer = {
        let mut c = login(&s, "writer");
        let stop = stop.clone();
        std::thread::spawn(move || {
            // (the WRITE, what was read right after it)
            let mut seen: Vec<(Content, Content)> = Vec::new();
            let mut last = HashMap::new();
            let mut seq = 0u64;
            while !stop.load(Ordering::Acquire) {
                seq += 1;
                let w = Content::Write {
                    id: (3 << 32) | seq,
                };
                c.write10(LUN, BLOCK, &w.encode(), BS);
                let after = Content::decode(&read(&mut c, BLOCK));
                seen.push((w, after));
                let n = BLOCK + 1 + (seq as u32 % NEIGHBOURS);
                let mut other = w.encode();
                other[24..32].copy_from_slice(&u64::from(n).to_be_bytes());
                c.write10(LUN, n, &other, BS);
                last.insert(n, other);
            }
            (seen, last, c)
        })
    };
    let attempts: Vec<Attempts> = racers.into_iter().map(|t| t.join().unwrap()).collect();
    stop.store(true, Ordering::Release);
    let (seen, last, mut c) = writer.join().unwrap();

    // Successful compares: content found -> content left. None found the same content.
    let mut next: HashMap<Content, Content> = HashMap::new();
    let (mut good, mut miscompares) = (0u64, 0u64);
    for (found, wrote, ok) in attempts.iter().flatten() {
        if *ok {
            good += 1;
            if let Some(other) = next.insert(*found, *wrote) {
                panic!("two compares succeeded on {found:?}: wrote {other:?} and {wrote:?}");
            }
        } else {
            miscompares += 1;
        }
    }
    assert_eq!(good + miscompares, 2 * u64::from(CAWS_PER_INITIATOR));
    // Both outcomes happened: the initiators really raced, and the writer interfered.
    assert!(miscompares > 0, "no compare ever lost a race");
    assert!(good > 0);
    assert!(
        !seen.is_empty(),
        "the third initiator never wrote the block"
    );

    // Chains: from the initial block and from each plain WRITE, follow the successful
    // compares; each step adds one to the counter; together they hold every success.
    let writes: HashSet<Content> = seen.iter().map(|(w, _)| *w).collect();
    let mut covered = 0u64;
    let mut ends = HashSet::new();
    for start in std::iter::once(Content::Initial).chain(writes.iter().copied()) {
        let mut at = start;
        let mut steps = 0u64;
        while let Some(&n) = next.get(&at) {
            steps += 1;
            match n {
                Content::Count { counter, .. } => assert_eq!(counter, steps, "{n:?}"),
                _ => panic!("a compare wrote {n:?}"),
            }
            at = n;
        }
        covered += steps;
        ends.insert(at);
    }
    assert_eq!(
        covered, good,
        "successful compares that found content no write left"
    );

    // After each WRITE, the block read back is that WRITE or the compares' chain from it.
    let reach = |from: Content, to: Content| {
        let mut at = from;
        loop {
            if at == to {
                return true;
            }
            match next.get(&at) {
                Some(&n) => at = n,
                None => return false,
            }
        }
    };
    for (w, after) in &seen {
        assert!(
            reach(*w, *after),
            "read {after:?} right after writing {w:?}: a compare slipped around the write"
        );
    }

    // The block ends as the end of the chain from the last WRITE.
    let last_write = seen.last().unwrap().0;
    let end = Content::decode(&read(&mut c, BLOCK));
    assert!(ends.contains(&end), "the block ends as {end:?}");
    assert!(
        reach(last_write, end),
        "{end:?} does not follow {last_write:?}"
    );
    for (n, data) in &last {
        assert_eq!(&read(&mut c, *n), data, "block {n} lost its last write");
    }
    eprintln!(
        "{} compares: {good} succeeded, {miscompares} miscompared; {} plain writes of the \
         block; {:.1} s",
        2 * CAWS_PER_INITIATOR,
        seen.len(),
        started.elapsed().as_secs_f64()
    );
}
