//! Running cases on fresh VMs or on pooled VMs reset between cases (dirty log + image rewrite).

use crate::kvm::{Host, KvmError, TestVm};
use crate::run;
use kvmconf_guests::case::Case;
use kvmconf_guests::layout::{GuestModel, Layout};
use kvmconf_guests::result::CaseResult;
use std::collections::{BTreeMap, BTreeSet};

const PAGE: u64 = 4096;

fn load_image(vm: &TestVm, model: &GuestModel, pages: &mut BTreeSet<u64>) -> Result<(), KvmError> {
    for (addr, bytes) in &model.image {
        vm.mem.write(*addr, bytes)?;
        let end = addr + bytes.len() as u64;
        let mut p = addr & !(PAGE - 1);
        while p < end {
            pages.insert(p);
            p += PAGE;
        }
    }
    Ok(())
}

/// The image as whole pages: page address → 4 KiB contents (zero outside the image's bytes).
fn image_pages(model: &GuestModel) -> BTreeMap<u64, Box<[u8; PAGE as usize]>> {
    let mut out: BTreeMap<u64, Box<[u8; PAGE as usize]>> = BTreeMap::new();
    for (addr, bytes) in &model.image {
        let mut a = *addr;
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let page = a & !(PAGE - 1);
            let off = (a - page) as usize;
            let n = rest.len().min(PAGE as usize - off);
            let buf = out
                .entry(page)
                .or_insert_with(|| Box::new([0; PAGE as usize]));
            buf[off..off + n].copy_from_slice(&rest[..n]);
            rest = &rest[n..];
            a += n as u64;
        }
    }
    out
}

/// Runs `case` on a new VM that is closed afterwards.
pub fn run_fresh(host: &Host, case: &Case) -> Result<CaseResult, KvmError> {
    let model = GuestModel::build(case);
    let mut vm = host.create_vm(&model.layout, false)?;
    load_image(&vm, &model, &mut BTreeSet::new())?;
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
    /// The last case's image by page: what those pages held before the guest ran.
    loaded: BTreeMap<u64, Box<[u8; PAGE as usize]>>,
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
}

/// VMs kept between cases, reset instead of recreated.
///
/// Reset: every page the guest dirtied (KVM_GET_DIRTY_LOG) or the harness loaded for the previous
/// case is zeroed, the new image is written, and registers, special registers, XSAVE, XCRs, debug
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
                let vm = self.host.create_vm(&model.layout, true)?;
                load_image(&vm, &model, &mut BTreeSet::new())?;
                self.stats.created += 1;
                self.vms.push(Pooled {
                    vm,
                    shape,
                    loaded: image_pages(&model),
                    uses: 0,
                });
                self.vms.len() - 1
            }
        };
        let p = &mut self.vms[idx];
        p.uses += 1;
        // The VM's layout (stubs, mode) may differ from the case's within one shape.
        p.vm.set_layout(model.layout.clone());
        match run::execute(&mut p.vm, &model, case) {
            Ok(r) => {
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

    /// Brings RAM from the last case's end state to `model`'s image: a page is rewritten when the
    /// guest dirtied it (KVM_GET_DIRTY_LOG) or when the two images differ on it; every other page
    /// still holds what both images say (zero when neither mentions it).
    fn reset(&mut self, i: usize, model: &GuestModel) -> Result<(), KvmError> {
        let p = &mut self.vms[i];
        self.dirty.clear();
        p.vm.take_dirty_pages(&mut self.dirty)?;
        let next = image_pages(model);
        let dirty: BTreeSet<u64> = self.dirty.iter().copied().collect();
        let mut touch: BTreeSet<u64> = dirty.clone();
        for (page, old) in &p.loaded {
            if next.get(page).is_none_or(|new| new != old) {
                touch.insert(*page);
            }
        }
        for page in next.keys() {
            if !p.loaded.contains_key(page) {
                touch.insert(*page);
            }
        }
        for &page in &touch {
            match next.get(&page) {
                Some(bytes) => p.vm.mem.write(page, &bytes[..])?,
                None => p.vm.mem.zero(page, PAGE)?,
            }
        }
        self.stats.pages_cleared += touch.len() as u64;
        p.loaded = next;
        p.vm.vcpu.reset_aux()?;
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
