//! Bounded fuzzing of the inventory reader, validator and Kubespray importer.
//!
//! A fixed-seed mutator derives inputs from the seed corpus (`capstan init`'s example, the
//! Kubespray example and the hostile files in `tests/corpus/`) and checks, for every case, that
//! nothing panics, that each case finishes quickly and that memory stays bounded (a counting
//! allocator measures the peak). The case budget keeps the test under a few seconds, so it runs
//! in CI with the other tests; raise `CAPSTAN_FUZZ_CASES` locally for a longer run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Counts live heap bytes and their peak, so each case's memory use can be checked.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        ptr
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Per case: unoptimised test builds are slow, the limits are still far below what the
/// unbounded reader needed (seconds and gigabytes).
const CASE_TIME: Duration = Duration::from_secs(3);
const CASE_MEMORY: usize = 256 << 20;
const DEFAULT_CASES: usize = 800;
const SEED: u64 = 0x5eed_c0de_7a11_0016;

/// xorshift64*: small, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Fragments that YAML, the validator and the INI reader treat specially.
const TOKENS: &[&str] = &[
    ":",
    ": ",
    "- ",
    "[",
    "]",
    "{",
    "}",
    ",",
    "&a ",
    "*a",
    "&b ",
    "*b",
    "!!str ",
    "? ",
    "|",
    ">",
    "#",
    "\t",
    "\n",
    "\n  ",
    "\"",
    "'",
    "---\n",
    "...\n",
    "<<: ",
    "~",
    "null",
    "0.0.0.0",
    "::",
    "fd00:0::1",
    "age1",
    "ssh-ed25519 ",
    "\u{1b}[31m",
    "\u{7}",
    "\u{202e}",
    "é",
    "\u{feff}",
    "4294967295h",
    "*-*-* 25:00",
    "[all]\n",
    "[etcd]\n",
    "[k8s_cluster:children]\n",
    "[all:vars]\n",
    "node[1:9]",
    "node[01:99:7]",
    " ansible_host=",
    " ip=",
    "=",
    "port:22",
    "name:",
    "hosts:",
    "roles: [etcd]",
    "etcd",
    "control_plane",
    "identity_file: ",
    "agent: true",
    "user: ",
];

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        let len = out.len();
        let at = rng.below(len + 1);
        match rng.below(7) {
            0 if len > 0 => {
                let end = (at + 1 + rng.below(32)).min(len);
                out.drain(at.min(end)..end);
            }
            1 if len > 0 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(64)).min(len);
                let copy: Vec<u8> = out[start..end].to_vec();
                let times = 1 + rng.below(8);
                for _ in 0..times {
                    out.splice(at..at, copy.iter().copied());
                }
            }
            2 if len > 0 => {
                let index = rng.below(len);
                out[index] = rng.next() as u8;
            }
            3 => {
                let other = &seeds[rng.below(seeds.len())];
                if !other.is_empty() {
                    let start = rng.below(other.len());
                    let end = (start + 1 + rng.below(256)).min(other.len());
                    out.splice(at..at, other[start..end].iter().copied());
                }
            }
            4 if len > 0 => {
                // Swap two lines.
                let text = String::from_utf8_lossy(&out).into_owned();
                let mut lines: Vec<&str> = text.split('\n').collect();
                let (a, b) = (rng.below(lines.len()), rng.below(lines.len()));
                lines.swap(a, b);
                out = lines.join("\n").into_bytes();
            }
            _ => {
                let token = TOKENS[rng.below(TOKENS.len())];
                out.splice(at..at, token.bytes());
            }
        }
    }
    out
}

fn seeds() -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut paths = vec![
        root.join("../examples/inventory.yaml"),
        root.join("../examples/kubespray-hosts.yaml"),
    ];
    let mut corpus: Vec<_> = std::fs::read_dir(root.join("tests/corpus"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    corpus.sort();
    paths.extend(corpus);
    paths.iter().map(|path| std::fs::read(path).unwrap()).collect()
}

/// Runs every entry point on `bytes`; the outcome (accepted or rejected) does not matter.
fn exercise(bytes: &[u8], dir: &Path) {
    let text = String::from_utf8_lossy(bytes);
    let _ = capstan_inventory::parse_str(&text, "fuzz.yaml", Path::new("/inv"));
    let _ = capstan_inventory::import_kubespray(&text, "inventory/fuzz/hosts.yaml");
    let _ = capstan_inventory::import_kubespray(&text, "inventory/fuzz/inventory.ini");
    // The file readers also see the raw bytes (invalid UTF-8 included).
    let path = dir.join("case.yaml");
    std::fs::write(&path, bytes).unwrap();
    let _ = capstan_inventory::load(&path);
    let _ = capstan_inventory::import_kubespray_file(&path);
}

fn run_case(bytes: &[u8], dir: &Path, label: &str) {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let started = Instant::now();
    let outcome = std::panic::catch_unwind(|| exercise(bytes, dir));
    let elapsed = started.elapsed();
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(before);
    let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
    assert!(outcome.is_ok(), "{label} panicked; input starts with {shown:?}");
    assert!(
        elapsed < CASE_TIME,
        "{label} took {elapsed:?}; input starts with {shown:?}"
    );
    assert!(
        peak < CASE_MEMORY,
        "{label} used {peak} bytes at peak; input starts with {shown:?}"
    );
}

#[test]
fn mutated_inventories_never_panic_hang_or_balloon() {
    let cases = std::env::var("CAPSTAN_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    let dir = tempfile::tempdir().unwrap();
    let seeds = seeds();
    for (index, seed) in seeds.iter().enumerate() {
        run_case(seed, dir.path(), &format!("seed {index}"));
    }
    let mut rng = Rng(SEED);
    let started = Instant::now();
    for case in 0..cases {
        let seed = &seeds[rng.below(seeds.len())];
        let input = mutate(&mut rng, &seeds, seed);
        run_case(&input, dir.path(), &format!("case {case}"));
    }
    eprintln!("{cases} mutated cases in {:?}", started.elapsed());
}
