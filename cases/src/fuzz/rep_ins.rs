//! KVM's INS and REP INS, modelled at the trace level, so the fuzzer can tell the known ways KVM's
//! instruction emulator runs them from anything else.
//!
//! The SDM's REP INS stores each element right after its port read (SDM 2 INS, REP), and an INS
//! that faults on its destination reads nothing. KVM's emulator (arch/x86/kvm/emulate.c,
//! `pio_in_emulated`) reads a *batch* first: at each entry into the instruction it reads `n =
//! max(1, min(in_page, 1024 / size, count))` elements in one KVM_EXIT_IO, where `count` is RCX
//! masked to the address size (1 without REP) and `in_page` is `4096 - (RDI & 0xfff)` with DF = 0,
//! `RDI & 0xfff` with DF = 1 (a byte count compared with an element count, as KVM does). Then:
//!
//! - DF = 0 (with REP): the batch is the destination operand `OP_MEM_STR`, written back with one
//!   `segmented_write` of `n * size` bytes, split at linear page boundaries; an MMIO part reaches
//!   the VMM as KVM_EXIT_MMIO writes of at most 8 bytes each ([`ONE_WRITE`]).
//! - DF = 1: one element is stored per iteration; when it goes to MMIO the emulator exits to the
//!   VMM, the guest re-enters the REP INS, its decode resets the read cache and the rest of the
//!   batch is lost: the next entry reads a new batch, so a REP INS of `c` elements into MMIO reads
//!   `c + (c - 1) + … + 1` of them ([`REREADS`]).
//! - A store that faults (a non-canonical or unmapped destination, at CPL0 where the emulator runs
//!   the instruction) comes after its batch was read: the batch is lost ([`REREADS`]).
//!
//! [`predict`] runs the interpreter with every INS executed that way (the answers KVM reads and
//! drops are taken out of the interpreter's I/O queue, so later reads see what KVM's see) and
//! rewrites each one's span of the trace into KVM's events. An INS the interpreter does not finish
//! for another reason (the exit budget, the instruction cap), or that faults after storing part of
//! a DF = 0 batch (KVM then stores none of it), is outside the model.

use kvmconf_guests::case::{Case, Mode};
use kvmconf_guests::interp::{Machine, Outcome};
use kvmconf_guests::result::{CaseResult, Event, Exit};

/// The deviation a DF = 0 REP INS into MMIO shows: one write per batch after its port reads.
pub const ONE_WRITE: &str = "kvm-pvm-emulator-rep-ins-mmio-one-write";

/// The deviation an INS shows when KVM reads ports it does not store: the batch before a fault,
/// and with DF = 1 the rest of a batch after each MMIO write, read again at the next entry.
pub const REREADS: &str = "kvm-pvm-emulator-ins-io-before-fault";

const PAGE: u64 = 4096;
/// The size of KVM's port read cache (`struct read_cache`'s `data`).
const READ_CACHE: u64 = 1024;
/// At most this many rounds of taking dropped answers out of the I/O queue.
const MAX_ROUNDS: usize = 64;

/// One execution of an INS as the interpreter ran it.
#[derive(Clone, Debug)]
struct InsRun {
    /// Its span of the trace.
    start: usize,
    end: usize,
    ip: u64,
    /// RIP at the next instruction the run reached (`None`: the run ended there).
    next: Option<u64>,
    port: u16,
    size: u64,
    df: bool,
    /// RDI, the whole register (KVM's `in_page` uses it unmasked).
    rdi: u64,
    /// Elements it asks for: RCX masked to the address size with REP, else 1.
    count: u64,
    /// The address-size mask.
    am: u64,
    /// The ES base (0 in 64-bit mode).
    base: u64,
}

/// One element the interpreter stored: the value read and its MMIO write, if it went to MMIO.
#[derive(Clone, Copy, Debug)]
struct Element {
    value: u64,
    write: Option<u64>,
}

/// Records every INS the interpreter reaches; call it before each instruction (`at_end` once the
/// run has finished).
#[derive(Default)]
struct Recorder {
    runs: Vec<InsRun>,
}

impl Recorder {
    fn before(&mut self, m: &Machine, mode: Mode) {
        let t = m.trace().len();
        if let Some(last) = self.runs.last_mut()
            && last.end == usize::MAX
        {
            last.end = t;
            last.next = Some(m.cpu.rip);
        }
        let Some(ins) = m.next_instruction() else {
            return;
        };
        use iced_x86::Mnemonic::{Insb, Insd, Insw};
        if !matches!(ins.mnemonic(), Insb | Insw | Insd) {
            return;
        }
        let am = match ins.op0_kind() {
            iced_x86::OpKind::MemoryESDI => 0xffff,
            iced_x86::OpKind::MemoryESEDI => 0xffff_ffff,
            _ => u64::MAX,
        };
        let c = &m.cpu;
        let rep = ins.has_rep_prefix() || ins.has_repne_prefix();
        self.runs.push(InsRun {
            start: t,
            end: usize::MAX,
            ip: ins.ip(),
            next: None,
            port: c.gpr[2] as u16,
            size: ins.memory_size().size() as u64,
            df: c.rflags & 0x400 != 0,
            rdi: c.gpr[7],
            count: if rep { c.gpr[1] & am } else { 1 },
            am,
            base: if mode == Mode::Long64 { 0 } else { c.es.base },
        });
    }

    fn at_end(&mut self, trace_len: usize) {
        if let Some(last) = self.runs.last_mut()
            && last.end == usize::MAX
        {
            last.end = trace_len;
        }
    }
}

/// The elements of an INS's span of the trace: each an IN of `port` and `size`, followed by its
/// MMIO write of the same value when it went to MMIO. `None` when the span holds anything else.
fn elements(span: &[Event], port: u16, size: u64) -> Option<Vec<Element>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < span.len() {
        let Event::IoIn(a) = &span[i] else {
            return None;
        };
        if a.port != Some(port) || u64::from(a.size) != size {
            return None;
        }
        let value = a.value.0;
        let write = match span.get(i + 1) {
            Some(Event::MmioWrite(w)) => {
                if u64::from(w.size) != size || w.value.0 != value {
                    return None;
                }
                i += 1;
                Some(w.addr?.0)
            }
            _ => None,
        };
        out.push(Element { value, write });
        i += 1;
    }
    Some(out)
}

/// KVM's MMIO writes for a DF = 0 batch `batch` stored from linear address `lin`: the batch's
/// bytes split at page boundaries, each MMIO part in writes of at most 8 bytes. `None` when an
/// element straddles a page boundary, a part mixes RAM and MMIO, or an MMIO part's elements are
/// not physically contiguous (outside the model).
fn merged_writes(batch: &[Element], lin: u64, size: u64, out: &mut Vec<Event>) -> Option<()> {
    let mut first = 0usize;
    while first < batch.len() {
        let at = lin.wrapping_add(first as u64 * size);
        let (left, room) = (batch.len() - first, PAGE - (at % PAGE));
        if room < left as u64 * size && room % size != 0 {
            return None;
        }
        let n = ((room / size) as usize).min(left);
        let part = &batch[first..first + n];
        match part[0].write {
            None => {
                if part.iter().any(|e| e.write.is_some()) {
                    return None;
                }
            }
            Some(gpa) => {
                let mut bytes = Vec::with_capacity(part.len() * size as usize);
                for (k, e) in part.iter().enumerate() {
                    if e.write != Some(gpa + k as u64 * size) {
                        return None;
                    }
                    bytes.extend_from_slice(&e.value.to_le_bytes()[..size as usize]);
                }
                for (k, piece) in bytes.chunks(8).enumerate() {
                    let mut v = [0u8; 8];
                    v[..piece.len()].copy_from_slice(piece);
                    out.push(Event::mmio_write(
                        gpa + 8 * k as u64,
                        piece.len() as u8,
                        u64::from_le_bytes(v),
                    ));
                }
            }
        }
        first += n;
    }
    Some(())
}

/// What modelling one INS gave.
#[derive(Debug, Default)]
struct Modelled {
    /// KVM's events for its span.
    events: Vec<Event>,
    /// Indices of `case.io_in` that KVM read and did not store.
    dropped: Vec<usize>,
    /// Whether a batch's values differ from what the interpreter stored.
    inconsistent: bool,
    /// Whether a DF = 0 batch of more than one element went to MMIO in one write.
    merged: bool,
}

/// KVM's run of one INS whose elements the interpreter stored as `elems` (all of its `count`, or
/// those before a fault when `faulted`), reading the case's I/O answers from index `cursor` on.
fn model(
    r: &InsRun,
    elems: &[Element],
    faulted: bool,
    answers: &[u64],
    cursor: usize,
) -> Option<Modelled> {
    let size = r.size;
    let all = kvmconf_guests::interp::flags::mask(size as u32);
    let read = |i: usize| answers.get(i).map_or(all, |v| v & all);
    let mut out = Modelled::default();
    let (mut cur, mut done, mut rdi, mut rcx) = (cursor, 0usize, r.rdi, r.count);
    let step = |rdi: u64, by: u64| (rdi & !r.am) | (rdi.wrapping_add(by) & r.am);
    let k = elems.len();
    while done < k || faulted {
        let off = rdi % PAGE;
        let in_page = if r.df { off } else { PAGE - off };
        let n = in_page.min(READ_CACHE / size).min(rcx).max(1) as usize;
        for i in 0..n {
            out.events
                .push(Event::io_in(r.port, size as u8, read(cur + i)));
        }
        if !r.df {
            if done + n > k {
                // The store of this batch faults: KVM stores none of it, so the interpreter must
                // not have stored any of it either.
                if done != k {
                    return None;
                }
                out.dropped.extend(cur..cur + n);
                break;
            }
            let batch = &elems[done..done + n];
            out.inconsistent |= (0..n).any(|i| read(cur + i) != batch[i].value);
            merged_writes(
                batch,
                r.base.wrapping_add(rdi & r.am),
                size,
                &mut out.events,
            )?;
            out.merged |= n > 1 && batch.iter().any(|e| e.write.is_some());
            done += n;
            rcx -= n as u64;
            rdi = step(rdi, n as u64 * size);
            cur += n;
        } else {
            // One element per iteration, until the batch is used up, an MMIO store ends this
            // entry (the rest of the batch is lost), or the store that faults.
            let (mut used, mut fault_here) = (0usize, false);
            while used < n {
                if done == k {
                    fault_here = true;
                    break;
                }
                let e = elems[done];
                out.inconsistent |= read(cur + used) != e.value;
                if let Some(gpa) = e.write {
                    out.events.push(Event::mmio_write(gpa, size as u8, e.value));
                }
                used += 1;
                done += 1;
                rcx -= 1;
                rdi = step(rdi, size.wrapping_neg());
                if e.write.is_some() {
                    break;
                }
            }
            out.dropped.extend(cur + used..cur + n);
            cur += n;
            if fault_here {
                break;
            }
        }
    }
    Some(out)
}

/// Whether the run shows that the INS `r`, left unfinished, faulted on its destination: the run
/// went on elsewhere (an exception handler), or ended in an exception or shutdown there.
fn faulted(r: &InsRun, exit: &Exit) -> bool {
    match r.next {
        Some(rip) => rip != r.ip,
        None => matches!(exit, Exit::Exception { .. } | Exit::Shutdown),
    }
}

/// The interpreter's outcome for `case` with every INS run as KVM's emulator runs it (see the
/// module documentation), and the deviations that made the prediction differ from the
/// interpreter's own ([`ONE_WRITE`], [`REREADS`]; empty when it does not). `None` when an INS is
/// outside the model, the run is out of the interpreter's scope (tainted, a timeout, an
/// unmodelled instruction), or KVM's longer trace would meet the exit budget.
pub fn predict(case: &Case) -> Option<(Outcome, Vec<&'static str>)> {
    predict_by(case, |c, before| {
        let o = Machine::new(c).run_with(|m| {
            before(m);
            Ok(false)
        });
        (o, ())
    })
    .map(|(o, (), ids)| (o, ids))
}

/// [`predict`] with another interpreter run: `interpret` runs the case it is given (the case with
/// the answers KVM drops taken out of its I/O queue), calling `before` with the machine before
/// each instruction, and returns the outcome and anything else it wants to hand back (e.g.
/// [`crate::differential::predict_observed_by`], which substitutes KVM's observed effects of
/// other instructions). Only the last run's scope is judged: the runs before it, with answers
/// still to be taken out, may take another path.
pub fn predict_by<T>(
    case: &Case,
    mut interpret: impl FnMut(&Case, &mut dyn FnMut(&Machine)) -> (Outcome, T),
) -> Option<(Outcome, T, Vec<&'static str>)> {
    let answers: Vec<u64> = case.io_in.iter().map(|a| a.value.0).collect();
    let mut dropped = std::collections::BTreeSet::<usize>::new();
    'round: for _ in 0..MAX_ROUNDS {
        let mut c = case.clone();
        c.io_in = case
            .io_in
            .iter()
            .enumerate()
            .filter(|(i, _)| !dropped.contains(i))
            .map(|(_, a)| a.clone())
            .collect();
        let mut rec = Recorder::default();
        let (mut o, extra) = interpret(&c, &mut |m| rec.before(m, case.mode));
        rec.at_end(o.result.trace.len());
        // Answers KVM read for the INS before the current one and did not store.
        let mut dropped_before = 0usize;
        let trace = &o.result.trace;
        let mut events: Vec<Event> = Vec::with_capacity(trace.len());
        let mut ids: Vec<&'static str> = Vec::new();
        let mut at = 0usize;
        for r in rec.runs.iter().filter(|r| r.count > 0) {
            let span = &trace[r.start..r.end];
            let elems = elements(span, r.port, r.size)?;
            let fault = elems.len() as u64 != r.count;
            if fault && !faulted(r, &o.result.exit) {
                // Unfinished for another reason (the budget, the cap).
                return None;
            }
            if case.cpl != 0 {
                // At CPL3 the CPU runs it: below IOPL 3 it faults before any port read, as the
                // interpreter has it; what KVM does with one that runs is outside the model.
                if fault && elems.is_empty() {
                    continue;
                }
                return None;
            }
            let consumed = trace[..r.start]
                .iter()
                .filter(|e| matches!(e, Event::IoIn(_)))
                .count();
            // KVM reads the answers in order: those the interpreter read, and those dropped.
            let cursor = consumed + dropped_before;
            let m = model(r, &elems, fault, &answers, cursor)?;
            dropped_before += m.dropped.len();
            let new: Vec<usize> = m
                .dropped
                .iter()
                .copied()
                .filter(|i| *i < answers.len() && !dropped.contains(i))
                .collect();
            if !new.is_empty() {
                dropped.extend(new);
                continue 'round;
            }
            if m.inconsistent {
                return None;
            }
            let mut add = |id| {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            };
            if m.merged {
                add(ONE_WRITE);
            }
            if !m.dropped.is_empty() || (m.events != span && r.df) {
                add(REREADS);
            }
            events.extend_from_slice(&trace[at..r.start]);
            events.extend(m.events);
            at = r.end;
        }
        events.extend_from_slice(&trace[at..]);
        let out_of_scope = o.tainted
            || matches!(
                o.result.exit,
                Exit::Timeout { .. } | Exit::UnsupportedInstruction { .. }
            );
        if out_of_scope || events.len() as u64 + 1 > u64::from(case.exit_budget()) {
            return None;
        }
        o.result.trace = events;
        return Some((o, extra, ids));
    }
    None
}

/// The deviations that explain KVM's result `kvm` for `case` completely: KVM agrees with
/// [`predict`]'s outcome (undefined flags masked) and the prediction differs from the
/// interpreter's own. `None` otherwise.
pub fn explain(case: &Case, kvm: &CaseResult) -> Option<Vec<&'static str>> {
    let (o, ids) = predict(case)?;
    (!ids.is_empty() && crate::differential::agrees(kvm, &o)).then_some(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvmconf_guests::Hex;
    use kvmconf_guests::case::{Dump, IoIn, MmioRegion};
    use kvmconf_guests::num::HexBytes;

    /// `code` (then HLT) at 0x1000 in `mode`, with `answers` for port 0x510 and 0x4000..0x6000 as
    /// MMIO, its first 0x20 bytes dumped.
    fn case(mode: Mode, code: &[u8], answers: &[u64]) -> Case {
        let mut bytes = code.to_vec();
        bytes.push(0xf4);
        let mut c = Case::new("rep_ins", mode, 0x1000, bytes);
        c.regs.rsp = Some(Hex(0x8000));
        c.io_in = answers
            .iter()
            .map(|&v| IoIn {
                port: Hex(0x510),
                value: Hex(v),
            })
            .collect();
        c.mmio.push(MmioRegion {
            addr: Hex(0x4000),
            len: Hex(0x2000),
            hex: HexBytes(vec![]),
        });
        c.dump.push(Dump {
            addr: Hex(0x4000),
            len: Hex(0x20),
        });
        c.validate().expect("a valid case");
        c
    }

    /// prot32: mov dx, 0x510; mov edi, EDI; mov ecx, ECX; (std;) rep ins{b,w,d} (the reproducer
    /// of cases/corpus/deviations/emulator_rep_insb_mmio_one_write.toml with EDI 0x4010, ECX 3).
    fn prot32_rep_ins(edi: u32, ecx: u32, size: u8, df: bool, answers: &[u64]) -> Case {
        let mut code = vec![0x66, 0xba, 0x10, 0x05, 0xbf];
        code.extend(edi.to_le_bytes());
        code.push(0xb9);
        code.extend(ecx.to_le_bytes());
        if df {
            code.push(0xfd);
        }
        code.extend(match size {
            1 => vec![0xf3, 0x6c],
            2 => vec![0x66, 0xf3, 0x6d],
            _ => vec![0xf3, 0x6d],
        });
        case(Mode::Prot32, &code, answers)
    }

    /// A fake KVM: the interpreter's result of `case` with its I/O answers `answers` and the trace
    /// `trace`.
    fn fake(case: &Case, answers: &[u64], trace: Vec<Event>) -> CaseResult {
        let mut c = case.clone();
        c.io_in.retain(|a| answers.contains(&a.value.0));
        let mut r = kvmconf_guests::interp::run(&c);
        r.trace = trace;
        r
    }

    fn ins(v: u64, size: u8) -> Event {
        Event::io_in(0x510, size, v)
    }

    #[test]
    fn rep_insb_df0_into_mmio_is_three_reads_then_one_write() {
        let c = prot32_rep_ins(0x4010, 3, 1, false, &[0x11, 0x22, 0x33]);
        // The interpreter follows the SDM: each byte stored right after its read.
        let sdm = kvmconf_guests::interp::run(&c).trace;
        assert_eq!(
            sdm,
            [
                ins(0x11, 1),
                Event::mmio_write(0x4010, 1, 0x11),
                ins(0x22, 1),
                Event::mmio_write(0x4011, 1, 0x22),
                ins(0x33, 1),
                Event::mmio_write(0x4012, 1, 0x33),
            ]
        );
        let want = vec![
            ins(0x11, 1),
            ins(0x22, 1),
            ins(0x33, 1),
            Event::mmio_write(0x4010, 3, 0x33_2211),
        ];
        let (o, ids) = predict(&c).expect("in the model");
        assert_eq!(o.result.trace, want);
        assert_eq!(ids, [ONE_WRITE]);
        let all = [0x11, 0x22, 0x33];
        assert_eq!(
            explain(&c, &fake(&c, &all, want.clone())),
            Some(vec![ONE_WRITE])
        );
    }

    #[test]
    fn rep_ins_explains_nothing_when_something_else_also_differs() {
        let c = prot32_rep_ins(0x4010, 3, 1, false, &[0x11, 0x22, 0x33]);
        let all = [0x11, 0x22, 0x33];
        let merged = vec![
            ins(0x11, 1),
            ins(0x22, 1),
            ins(0x33, 1),
            Event::mmio_write(0x4010, 3, 0x33_2211),
        ];
        // A register besides.
        let mut k = fake(&c, &all, merged.clone());
        k.regs.rsi.0 ^= 1;
        assert_eq!(explain(&c, &k), None);
        // The merged write with a wrong value, or before the reads, or two writes.
        let mut wrong = merged.clone();
        wrong[3] = Event::mmio_write(0x4010, 3, 0x33_2212);
        assert_eq!(explain(&c, &fake(&c, &all, wrong)), None);
        let mut early = merged.clone();
        early.rotate_right(1);
        assert_eq!(explain(&c, &fake(&c, &all, early)), None);
        let mut split = merged[..3].to_vec();
        split.extend([
            Event::mmio_write(0x4010, 2, 0x2211),
            Event::mmio_write(0x4012, 1, 0x33),
        ]);
        assert_eq!(explain(&c, &fake(&c, &all, split)), None);
        // KVM doing what the SDM says is no deviation of this kind.
        assert_eq!(explain(&c, &kvmconf_guests::interp::run(&c)), None);
    }

    #[test]
    fn rep_ins_df0_batches_split_at_pages_and_into_8_byte_writes() {
        // rep insd of 5 to 0x48c7 (seed 2026 input 164349): 20 bytes as 8 + 8 + 4.
        let a = [
            0xe08e_0ece,
            0x5e44_60c7,
            0x76d8_ddbc,
            0x98eb_a2ed,
            0xe920_6d5a,
        ];
        let c = prot32_rep_ins(0x48c7, 5, 4, false, &a);
        let mut want: Vec<Event> = a.iter().map(|&v| ins(v, 4)).collect();
        want.extend([
            Event::mmio_write(0x48c7, 8, 0x5e44_60c7_e08e_0ece),
            Event::mmio_write(0x48cf, 8, 0x98eb_a2ed_76d8_ddbc),
            Event::mmio_write(0x48d7, 4, 0xe920_6d5a),
        ]);
        assert_eq!(predict(&c).expect("in the model").0.result.trace, want);
        // rep insw of 4 to 0x4ffe: the first batch is 2 elements (in_page = 2 bytes, compared
        // with the element count), written as 2 + 2 bytes on either side of 0x5000; the second is
        // the last 2 elements, one 4-byte write.
        let a = [0x1111, 0x2222, 0x3333, 0x4444];
        let c = prot32_rep_ins(0x4ffe, 4, 2, false, &a);
        let want = vec![
            ins(0x1111, 2),
            ins(0x2222, 2),
            Event::mmio_write(0x4ffe, 2, 0x1111),
            Event::mmio_write(0x5000, 2, 0x2222),
            ins(0x3333, 2),
            ins(0x4444, 2),
            Event::mmio_write(0x5002, 4, 0x4444_3333),
        ];
        assert_eq!(predict(&c).expect("in the model").0.result.trace, want);
    }

    #[test]
    fn rep_ins_df1_into_mmio_reads_the_rest_of_each_batch_again() {
        // std; rep insb of 3 to 0x4010 down: batches of 3, 2 and 1, one byte stored from each.
        let a = [1, 2, 3, 4, 5, 6];
        let c = prot32_rep_ins(0x4010, 3, 1, true, &a);
        let want = vec![
            ins(1, 1),
            ins(2, 1),
            ins(3, 1),
            Event::mmio_write(0x4010, 1, 1),
            ins(4, 1),
            ins(5, 1),
            Event::mmio_write(0x400f, 1, 4),
            ins(6, 1),
            Event::mmio_write(0x400e, 1, 6),
        ];
        let (o, ids) = predict(&c).expect("in the model");
        assert_eq!(o.result.trace, want);
        assert_eq!(ids, [REREADS]);
        // KVM's memory holds 1, 4, 6: the interpreter's run without the answers it dropped.
        let k = fake(&c, &[1, 4, 6], want.clone());
        assert_eq!(explain(&c, &k), Some(vec![REREADS]));
        // Stored as the SDM says (1, 2, 3) under KVM's trace: memory differs, not explained.
        assert_eq!(explain(&c, &fake(&c, &a, want)), None);
    }

    #[test]
    fn an_ins_faulting_at_cpl0_reads_its_batch_first_and_not_at_cpl3() {
        // long64 with stubs: mov dx, 0x510; mov rdi, 1 << 63; mov ecx, 3; rep insb: #GP(0).
        let mut code = vec![0x66, 0xba, 0x10, 0x05, 0x48, 0xbf];
        code.extend((1u64 << 63).to_le_bytes());
        code.extend([0xb9, 3, 0, 0, 0, 0xf3, 0x6c]);
        let mut c = case(Mode::Long64, &code, &[1, 2, 3, 4]);
        c.stubs = true;
        let sdm = kvmconf_guests::interp::run(&c);
        assert!(
            matches!(sdm.exit, Exit::Exception { vector: 13, .. }),
            "{:?}",
            sdm.exit
        );
        let (o, ids) = predict(&c).expect("in the model");
        let mut want = vec![ins(1, 1), ins(2, 1), ins(3, 1)];
        want.extend(sdm.trace.iter().copied());
        assert_eq!(o.result.trace, want);
        assert_eq!(ids, [REREADS]);
        assert_eq!(explain(&c, &fake(&c, &[4], want)), Some(vec![REREADS]));
        // At CPL3 (IOPL 0) the CPU faults before any read: the model is the interpreter.
        c.cpl = 3;
        let sdm = kvmconf_guests::interp::run(&c);
        let (o, ids) = predict(&c).expect("in the model");
        assert_eq!(o.result.trace, sdm.trace);
        assert!(ids.is_empty());
    }
}
