//! The AMX tile of the quad-packed GEMM: `tdpbusd` sums u8 × i8 quads straight into i32, like
//! `vpdpbusd`, but over a 16 × 16 output tile per instruction (16 rows × 64 bytes of
//! activations against 16 quad rows × 16 columns of weights: 16,384 multiply-adds). The sums are
//! exact in i32 and the same as VNNI's, so both kernels give the same bits.
//!
//! The weights keep the AVX-512 VNNI panel layout (`[t/4][col][t%4]`, 16 columns), whose 16
//! quad steps of one 64-deep block are exactly a 16 × 64-byte weight tile; the packed depth is
//! rounded up to whole blocks with zeros. A call takes up to [`ROWS`] activation rows: it copies
//! them (from their segments) into one staging buffer of `depth`-byte rows, then, per pair of
//! panels, keeps four 16 × 16 accumulator tiles (two row halves × two panels) over the depth and
//! stores them into the caller's row buffer. The tile registers are configured once per GEMM
//! part and released after it ([`Scratch`]). Fewer than [`MIN_ROWS`] rows take the AVX-512 VNNI
//! tile instead, over the same panels: a 16-row tile would mostly multiply padding; so do
//! layers too small for AMX to pay ([`pays`]), packed for that tile from the start.
//!
//! Linux lends a process the 8 KiB tile state only on request (`arch_prctl`
//! `ARCH_REQ_XCOMP_PERM`), which [`ready`] makes once.

use super::blocked::TileRows;

/// Rows one call takes: two 16-row activation tiles.
pub const ROWS: usize = 32;
/// Rows below which the VNNI tile runs instead.
pub const MIN_ROWS: usize = 8;
/// Depth of one tile step: 64 bytes of u8 activations per row.
pub const DEPTH_BLOCK: usize = 64;
/// Columns per panel: one 16-column accumulator tile (the AVX-512 VNNI panel).
pub const PANEL: usize = 16;

/// Whether the CPU has AMX-TILE and AMX-INT8 and the OS lets this process use them (asked once).
pub fn ready() -> bool {
    static READY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *READY.get_or_init(|| {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            // CPUID leaf 7: EDX bit 24 is AMX-TILE, bit 25 AMX-INT8.
            let ids = std::arch::x86_64::__cpuid_count(7, 0);
            if ids.edx >> 24 & 3 != 3 {
                return false;
            }
            const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
            const XFEATURE_XTILEDATA: libc::c_long = 18;
            // SAFETY: a plain system call; it fails (non-zero) where the kernel does not support AMX.
            unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
        }
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        false
    })
}

/// Columns below which a layer keeps the AVX-512 VNNI tile.
pub const MIN_COLUMNS: usize = 64;

/// Whether a layer of `n` columns and `kq` bytes of depth runs faster on AMX than on the
/// AVX-512 VNNI tile: at least one whole 64-deep block (below, most of each tile multiplies
/// padding) and [`MIN_COLUMNS`] columns (below, the tile loads, stores and staging cost as much
/// as the multiply-adds save; measured in `bench/README.md`).
pub fn pays(n: usize, kq: usize) -> bool {
    kq >= DEPTH_BLOCK && n >= MIN_COLUMNS
}

/// The packed depth for a real depth `k`: whole 64-byte blocks.
pub fn packed_depth(k: usize) -> usize {
    k.div_ceil(DEPTH_BLOCK) * DEPTH_BLOCK
}

/// What the AMX tile keeps between the calls of one GEMM (`Panels::Scratch`): the staging rows,
/// an output block for tiles taller than the caller's row buffer, and whether this thread's tile
/// registers are configured. The configuration is loaded by the first call and released when
/// the GEMM's part on this thread ends (`Drop`), so no state outlives it.
#[derive(Default)]
pub struct Scratch {
    stage: Vec<u8>,
    out: Vec<i32>,
    configured: bool,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        #[cfg(target_arch = "x86_64")]
        if self.configured {
            // SAFETY: only set after `ldtilecfg` ran on this thread: the driver makes and drops
            // a scratch within one call on one thread (`blocked::block_rows`).
            unsafe { kernel::release() }
        }
    }
}

/// Panels `part` for the tile's u8 rows of `kq` bytes into `buf` (`np` i32 per row, at least
/// `rows` rows): `quads` holds panels of `depth` quad-packed bytes per column
/// (`depth = packed_depth(kq)`).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)] // the tile's rows, the panels' layout and the output's
pub fn tile_rows(a: &TileRows<u8>, kq: usize, depth: usize, quads: &[i8], part: std::ops::Range<usize>, buf: &mut [i32], np: usize, scratch: &mut Scratch) {
    let rows = a.rows();
    let panel_len = depth * PANEL;
    assert!(ready() && rows <= ROWS && depth == packed_depth(kq) && a.segs() * a.seg_len() == kq && quads.len() >= part.end * panel_len && np >= part.end * PANEL && buf.len() >= rows * np);
    if rows < MIN_ROWS {
        for first in (0..rows).step_by(super::blocked::MR_ZMM) {
            let sub = a.part(first, (rows - first).min(super::blocked::MR_ZMM));
            super::vnni::tile_rows(&sub, kq, panel_len, quads, part.clone(), &mut buf[first * np..], np, super::isa::Isa::Avx512Vnni);
        }
        return;
    }
    // Rows past `rows` and bytes past `kq` may hold anything: the former's sums are never read,
    // the latter meet zero weights.
    let Scratch { stage, out, configured } = scratch;
    if stage.len() < ROWS * depth {
        stage.resize(ROWS * depth, 0);
    }
    let seg = a.seg_len();
    for r in 0..rows {
        for s in 0..a.segs() {
            // SAFETY: each segment pointer is valid for `seg_len` reads (`TileRows`).
            let src = unsafe { std::slice::from_raw_parts(*a.ptrs().add(r * a.segs() + s), seg) };
            stage[r * depth + s * seg..][..seg].copy_from_slice(src);
        }
    }
    // Whole 16-row tiles are stored: into `buf` when it has room for them, else into `out`.
    let halves = rows.div_ceil(16);
    let direct = buf.len() >= halves * 16 * np;
    if !direct && out.len() < halves * 16 * np {
        out.resize(halves * 16 * np, 0);
    }
    // SAFETY: `ready()` (asserted) found AMX-TILE and AMX-INT8 and the OS's permission; the
    // staging buffer holds `ROWS` rows of `depth` bytes, `quads` whole panels of `depth / 4`
    // 64-byte steps, the destination `halves · 16` rows of `np ≥ 16·panels` i32 (asserted or
    // sized above).
    unsafe {
        if !*configured {
            kernel::configure();
            *configured = true;
        }
        let (st, b) = (stage.as_ptr(), quads.as_ptr().add(part.start * panel_len));
        let dst = if direct { buf.as_mut_ptr() } else { out.as_mut_ptr() }.add(part.start * PANEL);
        match halves {
            2 => kernel::run::<true>(st, depth, b, part.len(), dst, np),
            _ => kernel::run::<false>(st, depth, b, part.len(), dst, np),
        }
    }
    if !direct {
        for r in 0..rows {
            let cols = r * np + part.start * PANEL..r * np + part.end * PANEL;
            buf[cols.clone()].copy_from_slice(&out[cols]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod kernel {
    use super::{DEPTH_BLOCK, PANEL};
    use std::arch::asm;

    /// The tile configuration `ldtilecfg` reads: palette 1, eight tiles of 16 rows × 64 bytes
    /// (tmm0–3 the accumulators, tmm4–5 the two activation halves, tmm6–7 two weight panels).
    #[repr(C, align(64))]
    struct Config([u8; 64]);

    const CONFIG: Config = {
        let mut c = [0u8; 64];
        c[0] = 1;
        let mut t = 0;
        while t < 8 {
            // Bytes per row (u16 at 16 + 2t), then rows (u8 at 48 + t).
            c[16 + 2 * t] = 64;
            c[48 + t] = 16;
            t += 1;
        }
        Config(c)
    };

    /// Loads [`CONFIG`] into this thread's tile registers.
    ///
    /// # Safety
    /// The CPU has AMX-TILE, enabled for this process.
    pub unsafe fn configure() {
        let cfg = CONFIG;
        asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
    }

    /// Hands the tile state back, so the OS need not save it at every switch.
    ///
    /// # Safety
    /// The CPU has AMX-TILE, enabled for this process.
    pub unsafe fn release() {
        asm!("tilerelease", options(nostack, nomem));
    }

    /// `dst[r·np + j] = Σ_t stage[r·depth + t] · w[j][t]` for rows `r < 16` (and `16..32` with
    /// `TWO_HALVES`) and every column of `panels` panels.
    ///
    /// # Safety
    /// The CPU has AMX-TILE and AMX-INT8, enabled for this process, and this thread's tiles are
    /// configured ([`configure`]); `stage` holds 32 rows of `depth` bytes (16 without
    /// `TWO_HALVES`), `depth` a multiple of 64; `b` `panels` panels of `16·depth` bytes; `dst`
    /// 32 (or 16) rows of `np ≥ 16·panels` i32.
    pub unsafe fn run<const TWO_HALVES: bool>(stage: *const u8, depth: usize, b: *const i8, panels: usize, dst: *mut i32, np: usize) {
        let panel_len = depth * PANEL;
        let (lda, ldb, ldc) = (depth, 64usize, np * 4);
        let half = stage.add(16 * depth);
        let mut p = 0;
        while p < panels {
            let b0 = b.add(p * panel_len);
            let c0 = dst.add(p * PANEL);
            if p + 1 < panels {
                let b1 = b0.add(panel_len);
                asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
                for kb in (0..depth).step_by(DEPTH_BLOCK) {
                    // One 64-deep block of the weights is 16 quad steps of 64 bytes.
                    let (w0, w1) = (b0.add(kb * PANEL), b1.add(kb * PANEL));
                    asm!(
                        "tileloadd tmm4, [{a0} + {lda} * 1]",
                        "tileloadd tmm6, [{w0} + {ldb} * 1]",
                        "tileloadd tmm7, [{w1} + {ldb} * 1]",
                        "tdpbusd tmm0, tmm4, tmm6",
                        "tdpbusd tmm1, tmm4, tmm7",
                        a0 = in(reg) stage.add(kb), w0 = in(reg) w0, w1 = in(reg) w1, lda = in(reg) lda, ldb = in(reg) ldb,
                        options(nostack, readonly)
                    );
                    if TWO_HALVES {
                        asm!(
                            "tileloadd tmm5, [{a1} + {lda} * 1]",
                            "tdpbusd tmm2, tmm5, tmm6",
                            "tdpbusd tmm3, tmm5, tmm7",
                            a1 = in(reg) half.add(kb), lda = in(reg) lda,
                            options(nostack, readonly)
                        );
                    }
                }
                asm!("tilestored [{c} + {ldc} * 1], tmm0", "tilestored [{d} + {ldc} * 1], tmm1", c = in(reg) c0, d = in(reg) c0.add(PANEL), ldc = in(reg) ldc, options(nostack));
                if TWO_HALVES {
                    let c1 = c0.add(16 * np);
                    asm!("tilestored [{c} + {ldc} * 1], tmm2", "tilestored [{d} + {ldc} * 1], tmm3", c = in(reg) c1, d = in(reg) c1.add(PANEL), ldc = in(reg) ldc, options(nostack));
                }
                p += 2;
            } else {
                asm!("tilezero tmm0", "tilezero tmm2", options(nostack, nomem));
                for kb in (0..depth).step_by(DEPTH_BLOCK) {
                    asm!(
                        "tileloadd tmm4, [{a0} + {lda} * 1]",
                        "tileloadd tmm6, [{w0} + {ldb} * 1]",
                        "tdpbusd tmm0, tmm4, tmm6",
                        a0 = in(reg) stage.add(kb), w0 = in(reg) b0.add(kb * PANEL), lda = in(reg) lda, ldb = in(reg) ldb,
                        options(nostack, readonly)
                    );
                    if TWO_HALVES {
                        asm!("tileloadd tmm5, [{a1} + {lda} * 1]", "tdpbusd tmm2, tmm5, tmm6", a1 = in(reg) half.add(kb), lda = in(reg) lda, options(nostack, readonly));
                    }
                }
                asm!("tilestored [{c} + {ldc} * 1], tmm0", c = in(reg) c0, ldc = in(reg) ldc, options(nostack));
                if TWO_HALVES {
                    asm!("tilestored [{c} + {ldc} * 1], tmm2", c = in(reg) c0.add(16 * np), ldc = in(reg) ldc, options(nostack));
                }
                p += 1;
            }
        }
    }
}
