//! A layer epilogue that writes the next layer's input codes instead of f32 values: when an
//! integer layer's only reader is another integer layer with static input parameters, each
//! finished tile of the first layer's outputs (its own epilogue, activation and fused residual
//! included) is quantised with the reader's parameters while it is still in cache,
//! `code = clamp(round(y / s) + zp) + shift` ([`quantize_to`]), so the f32 value is never
//! stored nor read again. The codes equal those of the reader's own quantisation pass over the
//! stored value: the same `quantize_to` on the same f32 numbers.

use super::epilogue::{finish_phases, FinishRow};
use super::kernels::{quantize_to, Code};
use crate::model::vmath::Lanes;
use crate::quant::QParams;
use std::cell::RefCell;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};

thread_local! {
    /// Each thread's f32 rows of the tile being finished (a tile, or one sample of a depthwise
    /// conv: a few KiB, reused).
    static ROWS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `layer`'s epilogue, then quantisation to `T` codes with `params`.
pub struct Coded<'a, F, T> {
    layer: &'a F,
    params: QParams,
    /// Cleared when an output was not finite (its code would be meaningless).
    finite: AtomicBool,
    codes: PhantomData<T>,
}

impl<'a, F, T> Coded<'a, F, T> {
    pub fn new(layer: &'a F, params: QParams) -> Self {
        Coded { layer, params, finite: AtomicBool::new(true), codes: PhantomData }
    }

    /// Whether every output quantised so far was finite.
    pub fn finite(&self) -> bool {
        self.finite.load(Ordering::Relaxed)
    }

    /// Quantises columns `c0..c0 + n` of each `ldo`-long row of `y` into the same places of
    /// `out`.
    fn quantize(&self, y: &[f32], ldo: usize, c0: usize, n: usize, out: &mut [MaybeUninit<T>])
    where
        T: Code,
    {
        let finite = match n == ldo {
            true => quantize_to(y, &self.params, out),
            false => y.chunks(ldo).zip(out.chunks_mut(ldo)).fold(true, |ok, (y, o)| quantize_to(&y[c0..c0 + n], &self.params, &mut o[c0..c0 + n]) & ok),
        };
        if !finite {
            self.finite.store(false, Ordering::Relaxed);
        }
    }
}

impl<A, T: Code, F: FinishRow<A, f32>> FinishRow<A, T> for Coded<'_, F, T> {
    /// [`FinishRow::rows`] on one row, through a scratch row holding the columns before `c0`
    /// unused.
    fn row(&self, acc: &[A], row: usize, c0: usize, out: &mut [MaybeUninit<T>]) {
        let n = out.len();
        let mut y = vec![0f32; c0 + n];
        // SAFETY: scalars need no CPU feature; `MaybeUninit<f32>` has `f32`'s layout.
        unsafe { finish_phases::<f32, A, f32, F>(self.layer, acc, acc.len(), row, c0 + n, c0, n, &mut *(y.as_mut_slice() as *mut [f32] as *mut [MaybeUninit<f32>])) };
        self.quantize(&y[c0..], n, 0, n, out);
    }

    /// The layer's three phases ([`FinishRow`]) into this thread's f32 rows, laid out as
    /// `out` is, then their codes.
    #[inline(always)]
    unsafe fn rows<V: Lanes>(&self, acc: &[A], stride: usize, first: usize, ldo: usize, c0: usize, n: usize, out: &mut [MaybeUninit<T>]) {
        // Borrowed outside a closure, so that the code below is compiled for the caller's
        // instruction set (a closure would not inherit it, and its vector steps would not inline).
        let cell: *const RefCell<Vec<f32>> = ROWS.with(|rows| rows as *const _);
        // SAFETY: this thread's own value, which lives as long as the thread, used on it.
        let mut rows = unsafe { &*cell }.borrow_mut();
        if rows.len() < out.len() {
            rows.resize(out.len(), 0.0);
        }
        let y = &mut rows[..out.len()];
        // SAFETY: `MaybeUninit<f32>` has `f32`'s layout, and every value is initialised.
        let yu = unsafe { &mut *(y as *mut [f32] as *mut [MaybeUninit<f32>]) };
        // SAFETY: the caller's CPU features.
        unsafe { finish_phases::<V, A, f32, F>(self.layer, acc, stride, first, ldo, c0, n, yu) };
        self.quantize(y, ldo, c0, n, out);
    }
}
