//! The instruction sets the integer and the f32 GEMMs can run on, and the choice among them at
//! run time: the best the CPU has, capped by `WICK_INT8_ISA` and `WICK_F32_ISA`. Uses nothing
//! else in the crate.

/// The instruction set a packed GEMM runs on, chosen at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Plain code over the pair layout.
    Scalar,
    /// `vpmaddwd` over i16 pairs: 16 multiply-adds per instruction.
    Avx2,
    /// `vpmaddubsw` then `vpmaddwd` by ones over u8 × i8 quads: 32 multiply-adds per two
    /// instructions. Exact only for 7-bit activation codes (`|a₀w₀ + a₁w₁| ≤ 127·128·2 < 2¹⁵`,
    /// so the i16 pair sums never saturate): chosen for `u7` inputs only.
    Avx2U7,
    /// AVX-VNNI `vpdpbusd` on ymm: u8 × i8 quads summed straight into i32, 32 multiply-adds per
    /// instruction.
    AvxVnni,
    /// AVX-512 VNNI `vpdpbusd` over u8 × i8 quads summed straight into i32 (exact, no i16
    /// intermediate): 64 multiply-adds per instruction.
    Avx512Vnni,
    /// AMX `tdpbusd`: the same quad sums into i32 over 16 × 16 output tiles, 16,384
    /// multiply-adds per instruction (Sapphire Rapids and later Xeons; `matmul::amx`).
    Amx,
}

impl Isa {
    /// Every instruction set this CPU can run, best last (`Avx2U7` serves 7-bit inputs only).
    /// `WICK_INT8_ISA=scalar|avx2|avx2u7|avxvnni|avx512vnni` caps the choice (to compare kernels on one
    /// machine).
    pub fn available() -> Vec<Isa> {
        let mut v = vec![Isa::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") {
                v.push(Isa::Avx2);
                v.push(Isa::Avx2U7);
                if std::is_x86_feature_detected!("avxvnni") {
                    v.push(Isa::AvxVnni);
                }
            }
            if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw") && std::is_x86_feature_detected!("avx512vnni") {
                v.push(Isa::Avx512Vnni);
                // The AMX tile falls back to the AVX-512 one for short tiles.
                if super::amx::ready() {
                    v.push(Isa::Amx);
                }
            }
        }
        let cap = match std::env::var("WICK_INT8_ISA").as_deref() {
            Ok("scalar") => Isa::Scalar,
            Ok("avx2") => Isa::Avx2,
            Ok("avx2u7") => Isa::Avx2U7,
            Ok("avxvnni") => Isa::AvxVnni,
            Ok("avx512vnni") => Isa::Avx512Vnni,
            _ => Isa::Amx,
        };
        v.retain(|&i| i as u8 <= cap as u8);
        v
    }

    /// How reports name it.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "AVX2 vpmaddwd",
            Isa::Avx2U7 => "AVX2 vpmaddubsw (7-bit activations)",
            Isa::AvxVnni => "AVX-VNNI vpdpbusd",
            Isa::Avx512Vnni => "AVX-512 VNNI vpdpbusd",
            Isa::Amx => "AMX tdpbusd (small layers: AVX-512 VNNI)",
        }
    }

    /// The best available for full 8-bit activation codes.
    pub fn detect() -> Isa {
        Isa::detect_for(false)
    }

    /// The best available for activation codes of 7 bits (`seven`) or 8.
    pub fn detect_for(seven: bool) -> Isa {
        Isa::available().into_iter().rfind(|&i| seven || i != Isa::Avx2U7).expect("scalar is always available")
    }

    /// Whether it reads u8 rows and quad-packed weights (the VNNI kernels).
    pub fn quads(self) -> bool {
        matches!(self, Isa::Avx2U7 | Isa::AvxVnni | Isa::Avx512Vnni | Isa::Amx)
    }
}

/// The instruction set the f32 GEMM runs on, chosen at run time. Every one sums each output in
/// depth order, one fused multiply-add per step (the plain loop rounds after each multiply), so
/// the two FMA tiles give the same bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum F32Isa {
    /// A plain loop.
    Plain,
    /// AVX2 + FMA `vfmadd231ps` on ymm: 8 multiply-adds per instruction.
    Fma,
    /// AVX-512 `vfmadd231ps` on zmm: 16 multiply-adds per instruction.
    Avx512,
}

impl F32Isa {
    /// The best this CPU has, capped by `WICK_F32_ISA=plain|avx2` (to compare tiles on one
    /// machine).
    pub fn detect() -> F32Isa {
        let mut best = F32Isa::Plain;
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                best = F32Isa::Fma;
                if std::is_x86_feature_detected!("avx512f") {
                    best = F32Isa::Avx512;
                }
            }
        }
        let cap = match std::env::var("WICK_F32_ISA").as_deref() {
            Ok("plain") => F32Isa::Plain,
            Ok("avx2") => F32Isa::Fma,
            _ => F32Isa::Avx512,
        };
        best.min(cap)
    }

    /// How reports name it.
    pub fn name(self) -> &'static str {
        match self {
            F32Isa::Plain => "plain",
            F32Isa::Fma => "AVX2 FMA",
            F32Isa::Avx512 => "AVX-512 FMA",
        }
    }

    /// Output columns per packed panel: one vector of f32 lanes.
    pub fn panel(self) -> usize {
        match self {
            F32Isa::Avx512 => 16,
            _ => 8,
        }
    }
}
