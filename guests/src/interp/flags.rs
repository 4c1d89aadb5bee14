//! RFLAGS bit names and the pure functions that compute arithmetic flags from operands and results.

/// Carry flag.
pub const CF: u64 = 1;
/// Reserved bit 1, always set.
pub const FIXED: u64 = 1 << 1;
/// Parity flag.
pub const PF: u64 = 1 << 2;
/// Auxiliary carry flag.
pub const AF: u64 = 1 << 4;
/// Zero flag.
pub const ZF: u64 = 1 << 6;
/// Sign flag.
pub const SF: u64 = 1 << 7;
/// Trap flag.
pub const TF: u64 = 1 << 8;
/// Interrupt enable flag.
pub const IF: u64 = 1 << 9;
/// Direction flag.
pub const DF: u64 = 1 << 10;
/// Overflow flag.
pub const OF: u64 = 1 << 11;
/// I/O privilege level (two bits).
pub const IOPL: u64 = 3 << 12;
/// Nested task.
pub const NT: u64 = 1 << 14;
/// Resume flag.
pub const RF: u64 = 1 << 16;
/// Virtual-8086 mode.
pub const VM: u64 = 1 << 17;
/// Alignment check.
pub const AC: u64 = 1 << 18;
/// Virtual interrupt flag.
pub const VIF: u64 = 1 << 19;
/// Virtual interrupt pending.
pub const VIP: u64 = 1 << 20;
/// CPUID-available flag.
pub const ID: u64 = 1 << 21;
/// The six arithmetic status flags.
pub const STATUS: u64 = CF | PF | AF | ZF | SF | OF;

/// Converts iced-x86's `RflagsBits` set into architectural RFLAGS bit positions.
pub fn from_iced(bits: u32) -> u64 {
    use iced_x86::RflagsBits as R;
    let map = [
        (R::OF, OF),
        (R::SF, SF),
        (R::ZF, ZF),
        (R::AF, AF),
        (R::CF, CF),
        (R::PF, PF),
        (R::DF, DF),
        (R::IF, IF),
        (R::AC, AC),
    ];
    map.iter()
        .filter(|(i, _)| bits & i != 0)
        .fold(0, |acc, (_, f)| acc | f)
}

/// All-ones for an operand of `size` bytes (all 64 bits from 8 bytes up).
#[inline(always)]
pub const fn mask(size: u32) -> u64 {
    // A table lookup: the hot path calls this with run-time sizes, and a load beats the
    // shift-and-compare sequence the arithmetic form compiles to.
    const MASKS: [u64; 9] = [
        0,
        0xff,
        0xffff,
        0xff_ffff,
        0xffff_ffff,
        0xff_ffff_ffff,
        0xffff_ffff_ffff,
        0xff_ffff_ffff_ffff,
        u64::MAX,
    ];
    MASKS[if size >= 8 { 8 } else { size as usize }]
}

/// The sign bit of an operand of `size` bytes.
#[inline(always)]
pub const fn sign(size: u32) -> u64 {
    1u64 << (size * 8 - 1)
}

/// Sign-extends the low `size` bytes of `v` to 64 bits.
#[inline]
pub const fn sext(v: u64, size: u32) -> u64 {
    let sh = 64 - size * 8;
    (((v << sh) as i64) >> sh) as u64
}

/// PF for each value of a result's low byte (set when the number of one bits is even).
const PARITY: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        if (i as u8).count_ones() % 2 == 0 {
            t[i] = PF as u8;
        }
        i += 1;
    }
    t
};

/// PF, ZF and SF of a `size`-byte result.
#[inline(always)]
pub fn szp(res: u64, size: u32) -> u64 {
    let r = res & mask(size);
    let mut f = u64::from(PARITY[usize::from(r as u8)]);
    if r == 0 {
        f |= ZF;
    }
    if r & sign(size) != 0 {
        f |= SF;
    }
    f
}

/// Result and status flags of `a + b + carry` (ADD, ADC, INC without the CF rule).
#[inline(always)]
pub fn add(a: u64, b: u64, carry: u64, size: u32) -> (u64, u64) {
    let m = mask(size);
    let (a, b) = (a & m, b & m);
    let (res, cf) = if size == 8 {
        let (r1, c1) = a.overflowing_add(b);
        let (r2, c2) = r1.overflowing_add(carry);
        (r2, c1 || c2)
    } else {
        let full = a + b + carry;
        (full & m, full > m)
    };
    let mut f = szp(res, size);
    if cf {
        f |= CF;
    }
    if (a ^ res) & (b ^ res) & sign(size) != 0 {
        f |= OF;
    }
    if (a ^ b ^ res) & 0x10 != 0 {
        f |= AF;
    }
    (res, f)
}

/// Result and status flags of `a - b - borrow` (SUB, SBB, CMP, NEG, DEC without the CF rule).
#[inline(always)]
pub fn sub(a: u64, b: u64, borrow: u64, size: u32) -> (u64, u64) {
    let m = mask(size);
    let (a, b) = (a & m, b & m);
    let res = a.wrapping_sub(b).wrapping_sub(borrow) & m;
    let mut f = szp(res, size);
    if a < b || (borrow != 0 && a == b) {
        f |= CF;
    }
    if (a ^ b) & (a ^ res) & sign(size) != 0 {
        f |= OF;
    }
    if (a ^ b ^ res) & 0x10 != 0 {
        f |= AF;
    }
    (res, f)
}

/// Status flags of a logical result (AND, OR, XOR, TEST): CF = OF = 0, AF = 0 (undefined).
#[inline(always)]
pub fn logic(res: u64, size: u32) -> u64 {
    szp(res, size)
}

/// Evaluates a condition code (as iced-x86 numbers them) against RFLAGS.
#[inline]
pub fn cond(cc: iced_x86::ConditionCode, fl: u64) -> bool {
    use iced_x86::ConditionCode as C;
    let f = |b: u64| fl & b != 0;
    match cc {
        C::o => f(OF),
        C::no => !f(OF),
        C::b => f(CF),
        C::ae => !f(CF),
        C::e => f(ZF),
        C::ne => !f(ZF),
        C::be => f(CF) || f(ZF),
        C::a => !f(CF) && !f(ZF),
        C::s => f(SF),
        C::ns => !f(SF),
        C::p => f(PF),
        C::np => !f(PF),
        C::l => f(SF) != f(OF),
        C::ge => f(SF) == f(OF),
        C::le => f(ZF) || f(SF) != f(OF),
        C::g => !f(ZF) && f(SF) == f(OF),
        C::None => true,
    }
}

/// The flags a condition code reads.
pub fn cond_reads(cc: iced_x86::ConditionCode) -> u64 {
    use iced_x86::ConditionCode as C;
    match cc {
        C::o | C::no => OF,
        C::b | C::ae => CF,
        C::e | C::ne => ZF,
        C::be | C::a => CF | ZF,
        C::s | C::ns => SF,
        C::p | C::np => PF,
        C::l | C::ge => SF | OF,
        C::le | C::g => ZF | SF | OF,
        C::None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_sets_carry_overflow_and_aux_per_sdm() {
        // 0x7f + 1 = 0x80: OF, SF, AF; no CF.
        assert_eq!(add(0x7f, 1, 0, 1), (0x80, OF | SF | AF));
        // 0xff + 1 = 0 with CF, ZF, PF, AF.
        assert_eq!(add(0xff, 1, 0, 1), (0, CF | ZF | PF | AF));
        assert_eq!(add(u64::MAX, 0, 1, 8), (0, CF | ZF | PF | AF));
    }

    #[test]
    fn sub_borrows_and_overflows_per_sdm() {
        assert_eq!(sub(0, 1, 0, 2), (0xffff, CF | SF | PF | AF));
        assert_eq!(sub(0x8000_0000, 1, 0, 4), (0x7fff_ffff, OF | PF | AF));
        assert_eq!(sub(5, 5, 0, 8), (0, ZF | PF));
    }

    #[test]
    fn mask_covers_every_size() {
        for size in 0..8 {
            assert_eq!(mask(size), (1u64 << (size * 8)) - 1);
        }
        assert_eq!(mask(8), u64::MAX);
        assert_eq!(mask(16), u64::MAX);
    }

    #[test]
    fn parity_table_matches_bit_counts() {
        for b in 0..=255u64 {
            let even = b.count_ones() % 2 == 0;
            assert_eq!(szp(b | 0x100, 2) & PF != 0, even, "{b:#x}");
        }
    }

    #[test]
    fn parity_counts_only_the_low_byte() {
        assert_eq!(szp(0x0300, 2) & PF, PF);
        assert_eq!(szp(0x0001, 2) & PF, 0);
    }
}
