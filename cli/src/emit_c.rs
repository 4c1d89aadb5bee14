//! The standalone C reproducer of a case (`kvmconf repro --emit-c`): a program using only
//! `<linux/kvm.h>` and libc that sets up the same VM from [`GuestModel::build`], runs it, serves
//! I/O and MMIO like the harness, and prints EXPECTED (the reference interpreter's result) and GOT
//! lines; and the reference result of a single-step case it expects.

use kvmconf_guests::case::{Case, Mode};
use kvmconf_guests::interp::Machine;
use kvmconf_guests::layout::{
    GuestModel, REAL_STUB_BASE, REAL_STUB_CS, STUB_OFF, STUB_STRIDE, Segment, has_error_code,
};
use kvmconf_guests::result::{CaseResult, Event, Exit};
use std::fmt::Write as _;

/// The lines a reproducer prints for a result (the C program formats GOT lines the same way):
/// exit, event count, registers, memory digests, the first events, then for a single-step case
/// the step count and the first step pcs.
pub fn result_lines(r: &CaseResult, rflags_mask: u64, single_step: bool) -> Vec<String> {
    let mut out = Vec::new();
    out.push(match &r.exit {
        Exit::Hlt => "exit hlt".to_string(),
        Exit::Shutdown => "exit shutdown".into(),
        Exit::Exception {
            vector, error_code, ..
        } => match error_code {
            Some(e) => format!("exit exception vector={vector} error_code=0x{:x}", e.0),
            None => format!("exit exception vector={vector}"),
        },
        Exit::InternalError { suberror, .. } => format!("exit internal_error suberror={suberror}"),
        Exit::FailEntry { reason, .. } => format!("exit fail_entry reason=0x{:x}", reason.0),
        Exit::Unsupported { reason } => format!("exit unsupported reason={reason}"),
        Exit::ExitBudget { .. } => "exit exit_budget".into(),
        Exit::Timeout { .. } => "exit timeout".into(),
        e => format!("exit {}", e.kind()),
    });
    out.push(format!("events {}", r.trace.len()));
    let g = &r.regs;
    for (n, v) in [
        ("rax", g.rax),
        ("rcx", g.rcx),
        ("rdx", g.rdx),
        ("rbx", g.rbx),
        ("rsp", g.rsp),
        ("rbp", g.rbp),
        ("rsi", g.rsi),
        ("rdi", g.rdi),
        ("r8", g.r8),
        ("r9", g.r9),
        ("r10", g.r10),
        ("r11", g.r11),
        ("r12", g.r12),
        ("r13", g.r13),
        ("r14", g.r14),
        ("r15", g.r15),
        ("rip", g.rip),
    ] {
        out.push(format!("{n}=0x{:x}", v.0));
    }
    out.push(format!("rflags=0x{:x}", g.rflags.0 & rflags_mask));
    for m in &r.memory {
        out.push(format!(
            "memory 0x{:x} len=0x{:x} fnv1a=0x{:x}",
            m.addr.0,
            m.hex.0.len(),
            fnv1a(&m.hex.0)
        ));
    }
    for e in r.trace.iter().take(MAX_EVENTS) {
        let (kind, a) = match e {
            Event::IoOut(a) => ("io_out", a),
            Event::IoIn(a) => ("io_in", a),
            Event::MmioRead(a) => ("mmio_read", a),
            Event::MmioWrite(a) => ("mmio_write", a),
        };
        let place = match (a.port, a.addr) {
            (Some(p), _) => format!("port=0x{p:x}"),
            (None, Some(ad)) => format!("addr=0x{:x}", ad.0),
            _ => String::new(),
        };
        out.push(format!(
            "{kind} {place} size={} value=0x{:x}",
            a.size, a.value.0
        ));
    }
    if single_step {
        out.push(format!("steps {}", r.steps.len()));
        for pc in r.steps.iter().take(MAX_EVENTS) {
            out.push(format!("step pc=0x{:x}", pc.0));
        }
    }
    out
}

/// The reference result of a single-step case: the interpreter run instruction by instruction,
/// one KVM_EXIT_DEBUG per completed instruction (pc = the next instruction's linear address,
/// exception delivery included) after that instruction's I/O exits, a final HLT reported as
/// KVM_EXIT_HLT (api.rst 4.38, and as upstream x86 does), and the exit budget counting events and
/// steps as the harness does. Returns the result and its undefined RFLAGS bits.
pub fn stepped_reference(case: &Case) -> (CaseResult, u64) {
    let budget = case.exit_budget() as usize;
    let mut m = Machine::new(case);
    let mut steps = Vec::new();
    let mut executed = 0u64;
    let mut exits = 0usize;
    let mut out_of_budget = false;
    'run: while m.step().is_ok() {
        executed += 1;
        // The I/O exits of this instruction come first, then its debug exit.
        let events = m.trace().len();
        while exits < events + steps.len() {
            exits += 1;
            if exits + 1 > budget {
                out_of_budget = true;
                break 'run;
            }
        }
        let cs_base = m.cpu.cs.base;
        let pc = match case.mode {
            Mode::Long64 => m.cpu.rip,
            Mode::Prot32 => cs_base.wrapping_add(m.cpu.rip) & 0xffff_ffff,
            Mode::Real16 => cs_base + (m.cpu.rip & 0xffff),
        };
        steps.push(kvmconf_guests::Hex(pc));
        exits += 1;
        if exits + 1 > budget {
            out_of_budget = true;
            break;
        }
    }
    if !out_of_budget {
        let o = Machine::new(case).run();
        let mut r = o.result;
        r.steps = steps;
        return (r, o.undefined);
    }
    // The same instructions again, stopped by the instruction cap right there: the state at the
    // budget (the exit kind is the harness's).
    let mut again = Machine::new(case);
    again.set_cap(executed);
    let o = again.run();
    let mut r = o.result;
    r.exit = Exit::ExitBudget {
        exits: case.exit_budget(),
    };
    r.steps = steps;
    (r, o.undefined)
}

/// Events compared by a reproducer (the count is always compared).
const MAX_EVENTS: usize = 64;

fn fnv1a(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h ^= u64::from(x);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Byte runs as C: an array `<prefix>N` for each run, then the zero-terminated table `decl[]` of
/// `{address, length, bytes}` rows (`decl` is e.g. `const struct image images`).
fn c_runs(s: &mut String, prefix: &str, decl: &str, runs: &[(u64, Vec<u8>)], konst: bool) {
    for (i, (_, b)) in runs.iter().enumerate() {
        s.push_str(&c_bytes(&format!("{prefix}{i}"), b, konst));
    }
    let _ = writeln!(s, "static {decl}[] = {{");
    for (i, (a, b)) in runs.iter().enumerate() {
        let _ = writeln!(s, "  {{0x{a:x}ULL, {}, {prefix}{i}}},", b.len());
    }
    s.push_str("  {0, 0, 0},\n};\n");
}

fn c_bytes(name: &str, b: &[u8], konst: bool) -> String {
    let mut s = format!(
        "static {}uint8_t {name}[{}] = {{",
        if konst { "const " } else { "" },
        b.len().max(1)
    );
    if b.is_empty() {
        s.push('0');
    }
    for (i, x) in b.iter().enumerate() {
        if i % 16 == 0 {
            s.push_str("\n  ");
        }
        let _ = write!(s, "0x{x:02x},");
    }
    s.push_str("\n};\n");
    s
}

fn c_string(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                o.push('\\');
                o.push(c)
            }
            c if c.is_ascii_graphic() || c == ' ' => o.push(c),
            _ => o.push('?'),
        }
    }
    o.push('"');
    o
}

fn c_seg(s: &Segment) -> String {
    format!(
        "{{0x{:x}, 0x{:x}ULL, 0x{:x}, 0x{:x}}}",
        s.selector, s.base, s.limit, s.attributes
    )
}

/// A standalone C program that runs `case` the way the harness does and compares with the
/// interpreter's result.
pub fn emit_c(case: &Case) -> String {
    let model = GuestModel::build(case);
    let lay = &model.layout;
    let (reference, undefined) = if case.single_step {
        stepped_reference(case)
    } else {
        let o = Machine::new(case).run();
        (o.result, o.undefined)
    };
    let mask = !undefined;
    let expected = result_lines(&reference, mask, case.single_step);
    let cpu = &model.cpu;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "/* kvmconf reproducer for case {:?} ({} cpl {}), written by `kvmconf repro --emit-c`.\n \
         * The VM is the one kvmconf's harness builds (memory slots, MMIO holes, GDT/IDT/page tables,\n \
         * registers); EXPECTED lines are the reference interpreter's result, GOT lines this host's.\n \
         * A single-step case runs with KVM_SET_GUEST_DEBUG(ENABLE|SINGLESTEP) and prints the pc of\n \
         * every KVM_EXIT_DEBUG; its reference is the interpreter stepped instruction by instruction.\n \
         * Build: gcc -O1 -Wall -Werror -o repro repro.c   Run: ./repro [/dev/kvm]\n \
         * Exit status: 0 match, 1 mismatch, 2 setup error. */",
        case.name,
        case.mode.name(),
        case.cpl
    );
    s.push_str(C_HEAD);
    let stub_base = match case.mode {
        Mode::Real16 => REAL_STUB_BASE,
        _ => lay.reserved + STUB_OFF,
    };
    let _ = writeln!(s, "#define RAM_SIZE 0x{:x}ULL", lay.ram_size);
    let _ = writeln!(s, "#define MODE {}", case.mode.bitness());
    let _ = writeln!(s, "#define CPL {}", case.cpl);
    let _ = writeln!(s, "#define IDT_INSTALLED {}", u8::from(lay.idt_installed()));
    let _ = writeln!(s, "#define STUB_BASE 0x{stub_base:x}ULL");
    let _ = writeln!(
        s,
        "#define STUB_STRIDE {}",
        if case.mode == Mode::Real16 {
            1
        } else {
            STUB_STRIDE
        }
    );
    let _ = writeln!(s, "#define REAL_STUB_CS 0x{REAL_STUB_CS:x}");
    let _ = writeln!(s, "#define MAX_EVENTS_BUDGET {}", case.exit_budget());
    let _ = writeln!(s, "#define TIMEOUT_MS {}", case.deadline_ms());
    let _ = writeln!(s, "#define RFLAGS_MASK 0x{mask:x}ULL");
    let _ = writeln!(s, "#define MAX_EVENTS {MAX_EVENTS}");
    let _ = writeln!(s, "#define SINGLE_STEP {}", u8::from(case.single_step));
    let mut errc = String::from("static const int has_error_code[32] = {");
    for v in 0..32u8 {
        let _ = write!(errc, "{},", u8::from(has_error_code(v)));
    }
    errc.push_str("};\n");
    s.push_str(&errc);
    // Images.
    c_runs(
        &mut s,
        "img",
        "const struct image images",
        &model.image,
        true,
    );
    let _ = writeln!(s, "#define N_IMAGES {}", model.image.len());
    s.push_str("static const struct range slots[] = {\n");
    let rs = lay.ram_slots();
    for (a, e) in &rs {
        let _ = writeln!(s, "  {{0x{a:x}ULL, 0x{e:x}ULL}},");
    }
    s.push_str("  {0, 0},\n};\n");
    let _ = writeln!(s, "#define N_SLOTS {}", rs.len());
    c_runs(&mut s, "mmio", "struct mmio mmios", &model.mmio, false);
    let _ = writeln!(s, "#define N_MMIO {}", model.mmio.len());
    s.push_str("static const uint64_t io_in[] = {");
    for v in &case.io_in {
        let _ = write!(s, "0x{:x}ULL,", v.value.0);
    }
    s.push_str("0};\n");
    let _ = writeln!(s, "#define N_IO_IN {}", case.io_in.len());
    s.push_str("static const struct range dumps[] = {\n");
    for d in &case.dump {
        let _ = writeln!(s, "  {{0x{:x}ULL, 0x{:x}ULL}},", d.addr.0, d.len.0);
    }
    s.push_str("  {0, 0},\n};\n");
    let _ = writeln!(s, "#define N_DUMPS {}", case.dump.len());
    // Start state.
    s.push_str("static const uint64_t start_gpr[16] = {");
    for g in cpu.gpr {
        let _ = write!(s, "0x{g:x}ULL,");
    }
    s.push_str("};\n");
    let _ = writeln!(
        s,
        "static const uint64_t start_rip = 0x{:x}ULL, start_rflags = 0x{:x}ULL;",
        cpu.rip, cpu.rflags
    );
    let _ = writeln!(
        s,
        "static const struct seg start_segs[8] = {{ {}, {}, {}, {}, {}, {}, {}, {} }}; /* cs ds es fs gs ss tr ldt */",
        c_seg(&cpu.cs),
        c_seg(&cpu.ds),
        c_seg(&cpu.es),
        c_seg(&cpu.fs),
        c_seg(&cpu.gs),
        c_seg(&cpu.ss),
        c_seg(&cpu.tr),
        c_seg(&cpu.ldtr)
    );
    let _ = writeln!(
        s,
        "static const uint64_t gdt_base = 0x{:x}ULL, idt_base = 0x{:x}ULL;\nstatic const uint16_t gdt_limit = 0x{:x}, idt_limit = 0x{:x};",
        cpu.gdt.base, cpu.idt.base, cpu.gdt.limit, cpu.idt.limit
    );
    let _ = writeln!(
        s,
        "static const uint64_t start_cr0 = 0x{:x}ULL, start_cr2 = 0x{:x}ULL, start_cr3 = 0x{:x}ULL, start_cr4 = 0x{:x}ULL, start_efer = 0x{:x}ULL;",
        cpu.cr0, cpu.cr2, cpu.cr3, cpu.cr4, cpu.efer
    );
    s.push_str("static const char *const expected[] = {\n");
    for l in &expected {
        let _ = writeln!(s, "  {},", c_string(l));
    }
    s.push_str("  0,\n};\n");
    s.push_str(C_BODY);
    s
}

const C_HEAD: &str = r#"
#include <linux/kvm.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <unistd.h>

struct image { uint64_t gpa; uint64_t len; const uint8_t *bytes; };
struct range { uint64_t start; uint64_t end_or_len; };
struct mmio { uint64_t addr; uint64_t len; uint8_t *buf; };
struct seg { uint16_t sel; uint64_t base; uint32_t limit; uint32_t attr; };

"#;

const C_BODY: &str = r#"
#define MAX_LINES 256
static char got[MAX_LINES][128];
static int n_got;
static uint8_t *ram;
static struct kvm_run *run;
static volatile sig_atomic_t timed_out;

static void on_alarm(int sig)
{
	(void)sig;
	timed_out = 1;
	if (run)
		run->immediate_exit = 1;
}

static void die(const char *what)
{
	fprintf(stderr, "SETUP FAILED: %s: %s\n", what, strerror(errno));
	exit(2);
}

static char *next_line(void)
{
	return n_got < MAX_LINES ? got[n_got++] : got[MAX_LINES - 1];
}

static int is_ram(uint64_t gpa)
{
	for (int i = 0; i < N_SLOTS; i++)
		if (gpa >= slots[i].start && gpa < slots[i].end_or_len)
			return 1;
	return 0;
}

static struct mmio *region_of(uint64_t a)
{
	for (int i = 0; i < N_MMIO; i++)
		if (a >= mmios[i].addr && a < mmios[i].addr + mmios[i].len)
			return &mmios[i];
	return 0;
}

/* Guest-physical bytes: RAM from the mapping, MMIO regions from their buffers, else all-ones. */
static uint8_t phys_byte(uint64_t a)
{
	struct mmio *m;
	if (is_ram(a))
		return ram[a];
	m = region_of(a);
	return m ? m->buf[a - m->addr] : 0xff;
}

static uint64_t phys_read(uint64_t a, int len)
{
	uint64_t v = 0;
	for (int i = len - 1; i >= 0; i--)
		v = (v << 8) | phys_byte(a + i);
	return v;
}

static void to_kvm_seg(struct kvm_segment *k, const struct seg *s)
{
	memset(k, 0, sizeof *k);
	k->base = s->base;
	k->limit = s->limit;
	k->selector = s->sel;
	k->type = s->attr & 0xf;
	k->s = (s->attr >> 4) & 1;
	k->dpl = (s->attr >> 5) & 3;
	k->present = (s->attr >> 7) & 1;
	k->avl = (s->attr >> 12) & 1;
	k->l = (s->attr >> 13) & 1;
	k->db = (s->attr >> 14) & 1;
	k->g = (s->attr >> 15) & 1;
	k->unusable = (s->attr >> 16) & 1;
}

int main(int argc, char **argv)
{
	const char *dev = argc > 1 ? argv[1] : "/dev/kvm";
	int kvm = open(dev, O_RDWR | O_CLOEXEC);
	if (kvm < 0) {
		printf("SKIP: requirement not met: cannot open %s: %s\n", dev, strerror(errno));
		return 2;
	}
	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0)
		die("KVM_CREATE_VM");
	if (RAM_SIZE <= 0xfffbd000ULL && ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000UL) < 0)
		die("KVM_SET_TSS_ADDR");
	ram = mmap(0, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (ram == MAP_FAILED)
		die("mmap guest RAM");
	for (int i = 0; i < N_IMAGES; i++)
		memcpy(ram + images[i].gpa, images[i].bytes, images[i].len);
	for (int i = 0; i < N_SLOTS; i++) {
		struct kvm_userspace_memory_region r = {
			.slot = i,
			.guest_phys_addr = slots[i].start,
			.memory_size = slots[i].end_or_len - slots[i].start,
			.userspace_addr = (uint64_t)(uintptr_t)(ram + slots[i].start),
		};
		if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r) < 0)
			die("KVM_SET_USER_MEMORY_REGION");
	}
	int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	if (vcpu < 0)
		die("KVM_CREATE_VCPU");
	/* The harness gives every vCPU KVM_GET_SUPPORTED_CPUID through KVM_SET_CPUID2. */
	int nent = 256;
	struct kvm_cpuid2 *cpuid;
	for (;;) {
		cpuid = calloc(1, sizeof *cpuid + nent * sizeof cpuid->entries[0]);
		if (!cpuid)
			die("calloc");
		cpuid->nent = nent;
		if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, cpuid) == 0)
			break;
		if (errno != E2BIG)
			die("KVM_GET_SUPPORTED_CPUID");
		free(cpuid);
		nent *= 2;
	}
	if (ioctl(vcpu, KVM_SET_CPUID2, cpuid) < 0)
		die("KVM_SET_CPUID2");
	/* Guest debug before the registers, as the harness does: it adjusts RFLAGS.TF. */
	if (SINGLE_STEP) {
		struct kvm_guest_debug dbg;
		memset(&dbg, 0, sizeof dbg);
		dbg.control = KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP;
		if (ioctl(vcpu, KVM_SET_GUEST_DEBUG, &dbg) < 0)
			die("KVM_SET_GUEST_DEBUG");
	}
	int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (run_size < 0)
		die("KVM_GET_VCPU_MMAP_SIZE");
	run = mmap(0, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED)
		die("mmap kvm_run");

	struct kvm_sregs sregs;
	if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0)
		die("KVM_GET_SREGS");
	to_kvm_seg(&sregs.cs, &start_segs[0]);
	to_kvm_seg(&sregs.ds, &start_segs[1]);
	to_kvm_seg(&sregs.es, &start_segs[2]);
	to_kvm_seg(&sregs.fs, &start_segs[3]);
	to_kvm_seg(&sregs.gs, &start_segs[4]);
	to_kvm_seg(&sregs.ss, &start_segs[5]);
	to_kvm_seg(&sregs.tr, &start_segs[6]);
	to_kvm_seg(&sregs.ldt, &start_segs[7]);
	sregs.gdt.base = gdt_base;
	sregs.gdt.limit = gdt_limit;
	sregs.idt.base = idt_base;
	sregs.idt.limit = idt_limit;
	sregs.cr0 = start_cr0;
	sregs.cr2 = start_cr2;
	sregs.cr3 = start_cr3;
	sregs.cr4 = start_cr4;
	sregs.efer = start_efer;
	sregs.cr8 = 0;
	memset(sregs.interrupt_bitmap, 0, sizeof sregs.interrupt_bitmap);
	if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0)
		die("KVM_SET_SREGS");
	struct kvm_regs regs;
	memset(&regs, 0, sizeof regs);
	/* General registers in x86 encoding order. */
	__u64 *const g[16] = {&regs.rax, &regs.rcx, &regs.rdx, &regs.rbx, &regs.rsp, &regs.rbp,
			      &regs.rsi, &regs.rdi, &regs.r8,  &regs.r9,  &regs.r10, &regs.r11,
			      &regs.r12, &regs.r13, &regs.r14, &regs.r15};
	for (int i = 0; i < 16; i++)
		*g[i] = start_gpr[i];
	regs.rip = start_rip;
	regs.rflags = start_rflags;
	if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
		die("KVM_SET_REGS");

	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_alarm;
	sigaction(SIGALRM, &sa, 0);
	struct itimerval it;
	memset(&it, 0, sizeof it);
	it.it_value.tv_sec = TIMEOUT_MS / 1000;
	it.it_value.tv_usec = (TIMEOUT_MS % 1000) * 1000;
	setitimer(ITIMER_REAL, &it, 0);

	char exit_line[128] = "";
	int events = 0, io_pos = 0, ended = 0, vector = -1, n_steps = 0;
	char ev[MAX_EVENTS][128];
	uint64_t step_pc[MAX_EVENTS];
	while (!ended) {
		/* Every I/O, MMIO and debug exit counts against the budget, as in the harness. */
		if (events + n_steps >= MAX_EVENTS_BUDGET) {
			snprintf(exit_line, sizeof exit_line, "exit exit_budget");
			break;
		}
		if (timed_out) {
			snprintf(exit_line, sizeof exit_line, "exit timeout");
			break;
		}
		if (ioctl(vcpu, KVM_RUN, 0) < 0) {
			if (errno == EINTR) {
				run->immediate_exit = 0;
				continue;
			}
			snprintf(exit_line, sizeof exit_line, "exit rejected KVM_RUN errno=%d", errno);
			break;
		}
		switch (run->exit_reason) {
		case KVM_EXIT_IO: {
			uint8_t *p = (uint8_t *)run + run->io.data_offset;
			for (uint32_t i = 0; i < run->io.count; i++, p += run->io.size) {
				uint64_t v = 0;
				if (run->io.direction == KVM_EXIT_IO_OUT) {
					memcpy(&v, p, run->io.size);
				} else {
					v = io_pos < N_IO_IN ? io_in[io_pos++] : ~0ULL;
					if (run->io.size < 8)
						v &= (1ULL << (8 * run->io.size)) - 1;
					memcpy(p, &v, run->io.size);
				}
				if (events < MAX_EVENTS)
					snprintf(ev[events], sizeof ev[0], "%s port=0x%x size=%u value=0x%llx",
						 run->io.direction == KVM_EXIT_IO_OUT ? "io_out" : "io_in",
						 run->io.port, run->io.size, (unsigned long long)v);
				events++;
			}
			break;
		}
		case KVM_EXIT_MMIO: {
			uint64_t a = run->mmio.phys_addr, v = 0;
			int len = run->mmio.len;
			if (run->mmio.is_write) {
				memcpy(&v, run->mmio.data, len);
				for (int i = 0; i < len; i++) {
					struct mmio *m = region_of(a + i);
					if (m)
						m->buf[a + i - m->addr] = run->mmio.data[i];
				}
			} else {
				for (int i = 0; i < len; i++) {
					struct mmio *m = region_of(a + i);
					run->mmio.data[i] = m ? m->buf[a + i - m->addr] : 0xff;
				}
				memcpy(&v, run->mmio.data, len);
			}
			if (events < MAX_EVENTS)
				snprintf(ev[events], sizeof ev[0], "%s addr=0x%llx size=%d value=0x%llx",
					 run->mmio.is_write ? "mmio_write" : "mmio_read", (unsigned long long)a, len,
					 (unsigned long long)v);
			events++;
			break;
		}
		case KVM_EXIT_DEBUG:
			if (SINGLE_STEP && run->debug.arch.exception == 1) {
				if (n_steps < MAX_EVENTS)
					step_pc[n_steps] = run->debug.arch.pc;
				n_steps++;
				break;
			}
			ended = 1;
			snprintf(exit_line, sizeof exit_line, "exit debug");
			break;
		case KVM_EXIT_HLT:
			ended = 1;
			snprintf(exit_line, sizeof exit_line, "exit hlt");
			break;
		case KVM_EXIT_SHUTDOWN:
			ended = 1;
			snprintf(exit_line, sizeof exit_line, "exit shutdown");
			break;
		case KVM_EXIT_INTERNAL_ERROR:
			ended = 1;
			snprintf(exit_line, sizeof exit_line, "exit internal_error suberror=%u", run->internal.suberror);
			break;
		case KVM_EXIT_FAIL_ENTRY:
			ended = 1;
			snprintf(exit_line, sizeof exit_line, "exit fail_entry reason=0x%llx",
				 (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
			break;
		default:
			ended = 1;
			snprintf(exit_line, sizeof exit_line, "exit unsupported reason=%u", run->exit_reason);
			break;
		}
	}
	memset(&it, 0, sizeof it);
	setitimer(ITIMER_REAL, &it, 0);
	if (ioctl(vcpu, KVM_GET_REGS, &regs) < 0)
		die("KVM_GET_REGS");
	if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0)
		die("KVM_GET_SREGS");
	uint64_t gpr[16];
	for (int i = 0; i < 16; i++)
		gpr[i] = *g[i];
	uint64_t rip = regs.rip, rflags = regs.rflags;
	/* A HLT in a harness stub is an exception: report the interrupted context, as kvmconf does. */
	if (strcmp(exit_line, "exit hlt") == 0 && IDT_INSTALLED) {
		uint64_t at = sregs.cs.base + rip - 1;
		if (MODE == 16 ? (sregs.cs.selector == REAL_STUB_CS && at >= STUB_BASE && at < STUB_BASE + 32)
			       : (at >= STUB_BASE && at < STUB_BASE + 32 * STUB_STRIDE && (at - STUB_BASE) % STUB_STRIDE == 0))
			vector = (int)((at - STUB_BASE) / STUB_STRIDE);
	}
	if (vector >= 0) {
		int w = MODE / 8, e = MODE != 16 && has_error_code[vector];
		uint64_t spmask = MODE == 16 ? 0xffffULL : MODE == 32 ? 0xffffffffULL : ~0ULL;
		uint64_t sp = gpr[4] & spmask, fr = sregs.ss.base + sp;
		uint64_t err = e ? phys_read(fr, w) : 0;
		uint64_t frip = phys_read(fr + (e + 0) * w, w);
		uint64_t fcs = phys_read(fr + (e + 1) * w, w) & 0xffff;
		uint64_t ffl = phys_read(fr + (e + 2) * w, w);
		rip = frip;
		if (MODE == 64) {
			gpr[4] = phys_read(fr + (e + 3) * w, w);
			rflags = ffl;
		} else {
			gpr[4] = (gpr[4] & ~spmask) | ((sp + (uint64_t)(3 + e) * w) & spmask);
			rflags = MODE == 16 ? (rflags & ~0xffffULL) | (ffl & 0xffff) : ffl;
		}
		uint64_t cs_base = MODE == 16 ? fcs << 4 : 0;
		if ((fcs & 3) == 3 && vector == 13 && err == 0 && phys_byte(cs_base + frip) == 0xf4) {
			rip = frip + 1;
			rflags &= ~(1ULL << 16);
			snprintf(exit_line, sizeof exit_line, "exit hlt");
		} else if (e) {
			snprintf(exit_line, sizeof exit_line, "exit exception vector=%d error_code=0x%llx", vector,
				 (unsigned long long)err);
		} else {
			snprintf(exit_line, sizeof exit_line, "exit exception vector=%d", vector);
		}
	}
	snprintf(next_line(), sizeof got[0], "%s", exit_line);
	snprintf(next_line(), sizeof got[0], "events %d", events);
	static const char *const names[16] = {"rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
					      "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"};
	for (int i = 0; i < 16; i++)
		snprintf(next_line(), sizeof got[0], "%s=0x%llx", names[i], (unsigned long long)gpr[i]);
	snprintf(next_line(), sizeof got[0], "rip=0x%llx", (unsigned long long)rip);
	snprintf(next_line(), sizeof got[0], "rflags=0x%llx", (unsigned long long)(rflags & RFLAGS_MASK));
	for (int i = 0; i < N_DUMPS; i++) {
		uint64_t h = 0xcbf29ce484222325ULL;
		for (uint64_t k = 0; k < dumps[i].end_or_len; k++) {
			h ^= phys_byte(dumps[i].start + k);
			h *= 0x100000001b3ULL;
		}
		snprintf(next_line(), sizeof got[0], "memory 0x%llx len=0x%llx fnv1a=0x%llx",
			 (unsigned long long)dumps[i].start, (unsigned long long)dumps[i].end_or_len,
			 (unsigned long long)h);
	}
	for (int i = 0; i < events && i < MAX_EVENTS; i++)
		memcpy(next_line(), ev[i], sizeof got[0]);
	if (SINGLE_STEP) {
		snprintf(next_line(), sizeof got[0], "steps %d", n_steps);
		for (int i = 0; i < n_steps && i < MAX_EVENTS; i++)
			snprintf(next_line(), sizeof got[0], "step pc=0x%llx", (unsigned long long)step_pc[i]);
	}

	int n_exp = 0, bad = 0;
	while (expected[n_exp])
		n_exp++;
	for (int i = 0; i < n_exp; i++)
		printf("EXPECTED %s\n", expected[i]);
	for (int i = 0; i < n_got; i++)
		printf("GOT      %s\n", got[i]);
	for (int i = 0; i < n_exp || i < n_got; i++) {
		const char *x = i < n_exp ? expected[i] : "(nothing)";
		const char *y = i < n_got ? got[i] : "(nothing)";
		if (strcmp(x, y) != 0) {
			printf("MISMATCH expected \"%s\", got \"%s\"\n", x, y);
			bad = 1;
		}
	}
	printf("%s\n", bad ? "RESULT mismatch" : "RESULT match");
	return bad;
}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emitted_c_holds_the_image_and_expected_lines() {
        let mut c = Case::new(
            "t",
            Mode::Real16,
            0x1000,
            vec![0xb0, 0x48, 0xe6, 0xf1, 0xf4],
        );
        c.regs.rsp = Some(0x8000.into());
        let src = emit_c(&c);
        assert!(src.contains("0xb0,0x48,0xe6,0xf1,0xf4,"), "{src}");
        assert!(
            src.contains("\"io_out port=0xf1 size=1 value=0x48\""),
            "{src}"
        );
        assert!(src.contains("\"exit hlt\""));
        assert!(src.contains("#define SINGLE_STEP 0"));
        assert!(!src.contains("\"steps 0\""), "{src}");
    }

    /// prot32: xor eax,eax; inc eax; jmp +2; nop; nop; jz +2 (not taken); mov ebx,eax; hlt.
    fn jumps(max_exits: u32) -> Case {
        let code = vec![
            0x31, 0xc0, 0x40, 0xeb, 0x02, 0x90, 0x90, 0x74, 0x02, 0x89, 0xc3, 0xf4,
        ];
        let mut c = Case::new("jumps", Mode::Prot32, 0x1000, code);
        c.regs.rsp = Some(0x8000.into());
        c.single_step = true;
        c.max_exits = Some(max_exits);
        c
    }

    #[test]
    fn stepped_reference_records_one_pc_per_instruction_until_the_budget() {
        let (r, _) = stepped_reference(&jumps(5));
        let pcs: Vec<u64> = r.steps.iter().map(|h| h.0).collect();
        assert_eq!(pcs, [0x1002, 0x1003, 0x1007, 0x1009, 0x100b]);
        assert!(
            matches!(r.exit, Exit::ExitBudget { exits: 5 }),
            "{:?}",
            r.exit
        );
        assert_eq!(r.regs.rip.0, 0x100b);
        assert_eq!(r.regs.rbx.0, 1);
        // With budget to spare the run ends at the HLT, which is not a step.
        let (r, _) = stepped_reference(&jumps(40));
        assert_eq!(r.steps.len(), 5);
        assert_eq!(r.exit, Exit::Hlt);
        assert_eq!(r.regs.rip.0, 0x100c);
        // Budget 3: the state after three instructions.
        let (r, _) = stepped_reference(&jumps(3));
        assert_eq!(r.steps.len(), 3);
        assert_eq!(r.regs.rip.0, 0x1007);
        assert_eq!(r.regs.rbx.0, 0);
    }

    #[test]
    fn emitted_c_of_a_single_step_case_enables_guest_debug_and_expects_the_steps() {
        let src = emit_c(&jumps(5));
        assert!(src.contains("#define SINGLE_STEP 1"), "{src}");
        assert!(src.contains("KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP"));
        assert!(src.contains("\"exit exit_budget\""), "{src}");
        assert!(src.contains("\"steps 5\",\n  \"step pc=0x1002\""), "{src}");
        assert!(src.contains("\"step pc=0x100b\""), "{src}");
    }
}
