//! Values moved to the heap for good, fallibly: per-CPU tables and areas that live as long as the
//! kernel, made when a CPU starts.

/// Moves `value` to the heap for good, or `None` if the heap is exhausted (where `Box::new`
/// would end the kernel). Freed, if ever, with `Box::from_raw`.
pub(crate) fn try_leak<T>(value: T) -> Option<&'static mut T> {
    let layout = core::alloc::Layout::new::<T>();
    assert!(layout.size() != 0, "try_leak of a zero-sized type");
    // SAFETY: the layout has a non-zero size.
    let ptr = unsafe { alloc::alloc::alloc(layout) }.cast::<T>();
    if ptr.is_null() {
        return None;
    }
    // SAFETY: a fresh block of `T`'s layout, ours alone and never freed here, so the reference
    // may live for good.
    unsafe {
        ptr.write(value);
        Some(&mut *ptr)
    }
}
