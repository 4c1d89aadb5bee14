//! Running cases on fresh VMs or on pooled VMs reset between cases (dirty log + image rewrite).

use crate::kvm::{Host, KvmError, TestVm};
use crate::run;
use crate::touch::{Finished, StateKinds};
use kvmconf_guests::case::Case;
use kvmconf_guests::layout::{GuestModel, Layout};
use kvmconf_guests::result::CaseResult;
use std::collections::BTreeSet;

const PAGE: u64 = 4096;

/// Runs `case` on a new VM that is closed afterwards.
pub fn run_fresh(host: &Host, case: &Case) -> Result<CaseResult, KvmError> {
    let model = GuestModel::build(case);
    let mut vm = host.boot(&model, false)?;
    run::execute(&mut vm, &model, case)
}

/// The memslot shape a pooled VM can serve.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Shape {
    ram_size: u64,
    holes: Vec<(u64, u64)>,
}

impl Shape {
    fn of(l: &Layout) -> Shape {
        Shape {
            ram_size: l.ram_size,
            holes: l.holes.clone(),
        }
    }
}

struct Pooled {
    vm: TestVm,
    shape: Shape,
    /// The last case's image: what RAM held before the guest ran (zero elsewhere).
    loaded: Vec<(u64, Vec<u8>)>,
    /// What the last case was, to decide which state kinds it could have changed.
    finished: Option<Finished>,
    uses: u64,
}

/// Statistics of a pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// VMs created.
    pub created: u64,
    /// Cases run on a reused VM.
    pub reused: u64,
    /// Pages cleared by resets.
    pub pages_cleared: u64,
    /// State kinds (XSAVE, XCRs, debug registers, MSRs, MP state) restored by resets.
    pub kinds_restored: u64,
    /// State kinds resets left alone because the last case could not have changed them.
    pub kinds_skipped: u64,
}

/// VMs kept between cases, reset instead of recreated.
///
/// Reset: pages the guest dirtied (KVM_GET_DIRTY_LOG) and the previous image's byte runs that the
/// new image does not repeat are zeroed, the new image's changed runs are written, and registers, special registers, XSAVE, XCRs, debug
/// registers, vCPU events, MP state and the MSRs in [`crate::kvm::RESET_MSRS`] are restored. With `verify`
/// set, all of RAM is compared against the expected image after every reset.
pub struct Pool<'h> {
    host: &'h Host,
    vms: Vec<Pooled>,
    capacity: usize,
    /// Check all of RAM after each reset (slow; for tests).
    pub verify: bool,
    /// Reuse a VM after a `single_step` case. Off by default: on kvm_pvm a single-stepped HLT
    /// leaves vCPU state that no documented ioctl resets (see cases/deviations.toml).
    pub reuse_after_single_step: bool,
    stats: PoolStats,
    dirty: Vec<u64>,
}

impl<'h> Pool<'h> {
    /// An empty pool keeping up to `capacity` VMs of different shapes.
    pub fn new(host: &'h Host, capacity: usize) -> Pool<'h> {
        Pool {
            host,
            vms: Vec::new(),
            capacity: capacity.max(1),
            verify: false,
            reuse_after_single_step: false,
            stats: PoolStats::default(),
            dirty: Vec::new(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> PoolStats {
        self.stats
    }

    /// Runs `case` on a pooled VM.
    pub fn run(&mut self, case: &Case) -> Result<CaseResult, KvmError> {
        let model = GuestModel::build(case);
        let shape = Shape::of(&model.layout);
        let idx = match self.vms.iter().position(|p| p.shape == shape) {
            Some(i) => {
                self.reset(i, &model)?;
                self.stats.reused += 1;
                i
            }
            None => {
                if self.vms.len() >= self.capacity {
                    // Drop the least used VM.
                    let (i, _) = self
                        .vms
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, p)| p.uses)
                        .expect("pool is not empty");
                    self.vms.swap_remove(i);
                }
                let vm = self.host.boot(&model, true)?;
                self.stats.created += 1;
                self.vms.push(Pooled {
                    vm,
                    shape,
                    loaded: Vec::new(),
                    finished: None,
                    uses: 0,
                });
                self.vms.len() - 1
            }
        };
        let p = &mut self.vms[idx];
        p.uses += 1;
        // The VM's layout (stubs, mode) may differ from the case's within one shape.
        p.vm.set_layout(model.layout.clone());
        let result = run::execute(&mut p.vm, &model, case);
        p.loaded = model.image;
        match result {
            Ok(r) => {
                p.finished = Some(Finished::new(&r.exit, case.single_step, &model.cpu));
                if case.single_step && !self.reuse_after_single_step {
                    self.vms.swap_remove(idx);
                }
                Ok(r)
            }
            Err(e) => {
                // A VM that failed mid-case is not trusted again.
                self.vms.swap_remove(idx);
                Err(e)
            }
        }
    }

    /// Brings RAM from the last case's end state to `model`'s image. Invariant between cases:
    /// RAM is zero except on the last image's bytes and on pages the guest dirtied. So: zero the
    /// dirtied pages and the old image's runs that the new image does not repeat, then write the
    /// new runs that are new or touch a zeroed page.
    fn reset(&mut self, i: usize, model: &GuestModel) -> Result<(), KvmError> {
        let p = &mut self.vms[i];
        self.dirty.clear();
        p.vm.take_dirty_pages(&mut self.dirty)?;
        let dirty: BTreeSet<u64> = self.dirty.iter().copied().collect();
        let touches_dirty = |addr: u64, len: usize| {
            let (mut pg, end) = (addr & !(PAGE - 1), addr + len as u64);
            while pg < end {
                if dirty.contains(&pg) {
                    return true;
                }
                pg += PAGE;
            }
            false
        };
        let kept = |run: &(u64, Vec<u8>), other: &[(u64, Vec<u8>)]| other.iter().any(|o| o == run);
        let mut cleared = dirty.len() as u64;
        for &page in &dirty {
            p.vm.mem.zero(page, PAGE)?;
        }
        for run in &p.loaded {
            if !kept(run, &model.image) {
                p.vm.mem.zero(run.0, run.1.len() as u64)?;
                cleared += 1;
            }
        }
        for run in &model.image {
            if !kept(run, &p.loaded) || touches_dirty(run.0, run.1.len()) {
                p.vm.mem.write(run.0, &run.1)?;
            }
        }
        self.stats.pages_cleared += cleared;
        let kinds = match p.finished {
            None => StateKinds::NONE,
            Some(f) if f.narrowable(self.dirty.len()) => f.kinds(&p.loaded),
            Some(_) => StateKinds::ALL,
        };
        self.stats.kinds_restored += kinds.count();
        self.stats.kinds_skipped += StateKinds::ALL.count() - kinds.count();
        p.vm.vcpu.reset_aux(kinds)?;
        if self.verify {
            verify_image(&p.vm, model)?;
        }
        Ok(())
    }
}

/// Checks that all of RAM equals `model`'s image with zeroes elsewhere.
pub fn verify_image(vm: &TestVm, model: &GuestModel) -> Result<(), KvmError> {
    let size = vm.mem.size();
    let mut expect = vec![0u8; size as usize];
    for (a, b) in &model.image {
        expect[*a as usize..*a as usize + b.len()].copy_from_slice(b);
    }
    let mut got = vec![0u8; size as usize];
    vm.mem.read(0, &mut got)?;
    if let Some(off) = got.iter().zip(&expect).position(|(g, e)| g != e) {
        panic!(
            "pooled reset left guest RAM different from a fresh image at {off:#x}: {:#04x} instead of {:#04x}",
            got[off], expect[off]
        );
    }
    Ok(())
}
