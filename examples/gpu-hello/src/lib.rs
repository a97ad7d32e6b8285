//! raibid-ci's GPU example: what a repository with a GPU test looks like.
//!
//! The CUDA driver API (`libcuda.so.1`, installed with the NVIDIA driver and injected into GPU pods by the NVIDIA
//! runtime) is loaded at run time with `libloading`, so the crate compiles on any machine; only running the test
//! needs a GPU. Functions and signatures follow NVIDIA's CUDA Driver API reference (`cuda.h`): `cuInit`,
//! `cuDriverGetVersion`, `cuDeviceGetCount`, `cuDeviceGet`, `cuDeviceGetName`, `cuDevicePrimaryCtxRetain`,
//! `cuCtxSetCurrent`, `cuMemAlloc_v2`, `cuMemcpyHtoD_v2`, `cuMemcpyDtoH_v2`, `cuMemFree_v2`,
//! `cuDevicePrimaryCtxRelease_v2`.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::fmt;

type CuResult = c_int;
type CuDevice = c_int;
type CuContext = *mut c_void;
type CuDevicePtr = u64;

/// `CUDA_ERROR_NO_DEVICE`: the driver is there, no GPU is visible (e.g. `CUDA_VISIBLE_DEVICES` empty).
const CUDA_ERROR_NO_DEVICE: CuResult = 100;

/// Why the GPU could not be used; the message says what was looked for.
#[derive(Debug)]
pub enum GpuError {
    /// `libcuda.so.1` could not be loaded: no NVIDIA driver on this machine (or not injected into the container).
    NoDriver(String),
    /// A driver call failed.
    Call { call: &'static str, code: CuResult },
    /// The driver sees no device.
    NoDevice,
}

impl fmt::Display for GpuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpuError::NoDriver(e) => write!(
                f,
                "no CUDA driver: could not load libcuda.so.1 ({e}). This test needs an NVIDIA GPU and its driver; \
                 raibid-ci runs it only on a GPU agent (`gpu: true` in .raibid.yaml)"
            ),
            GpuError::Call { call, code } => write!(f, "CUDA driver call {call} failed with CUresult {code}"),
            GpuError::NoDevice => write!(
                f,
                "the CUDA driver sees no GPU (CUresult {CUDA_ERROR_NO_DEVICE}): is NVIDIA_VISIBLE_DEVICES / \
                 CUDA_VISIBLE_DEVICES empty?"
            ),
        }
    }
}

impl std::error::Error for GpuError {}

/// What the driver reports about the first GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    /// Number of devices the driver sees (the slices this job was given).
    pub devices: i32,
    /// Name of device 0, e.g. `NVIDIA GB10`.
    pub name: String,
    /// The driver's CUDA version as `major.minor` (e.g. `13.0`).
    pub cuda_version: String,
}

/// The CUDA driver, loaded from `libcuda.so.1`.
pub struct Driver {
    lib: libloading::Library,
}

/// An error with its sources (libloading's `dlopen failed` carries dlerror()'s text as its source).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

fn check(call: &'static str, code: CuResult) -> Result<(), GpuError> {
    match code {
        0 => Ok(()),
        CUDA_ERROR_NO_DEVICE => Err(GpuError::NoDevice),
        code => Err(GpuError::Call { call, code }),
    }
}

impl Driver {
    /// Loads the driver library and initialises it (`cuInit(0)`).
    pub fn load() -> Result<Self, GpuError> {
        // SAFETY: loading the NVIDIA driver library runs its initialisers, which have no preconditions.
        let lib = unsafe { libloading::Library::new("libcuda.so.1") }
            .map_err(|e| GpuError::NoDriver(chain(&e)))?;
        let d = Driver { lib };
        // SAFETY: cuInit(unsigned int Flags) -> CUresult; Flags must be 0.
        let code = unsafe { d.sym::<unsafe extern "C" fn(c_uint) -> CuResult>(b"cuInit\0")?(0) };
        check("cuInit", code)?;
        Ok(d)
    }

    /// # Safety
    /// `T` must be the exact C signature of the symbol `name` in `cuda.h`.
    unsafe fn sym<T: Copy>(&self, name: &'static [u8]) -> Result<T, GpuError> {
        let s: libloading::Symbol<T> = self.lib.get(name).map_err(|e| {
            GpuError::NoDriver(format!(
                "symbol {}: {}",
                String::from_utf8_lossy(name),
                chain(&e)
            ))
        })?;
        Ok(*s)
    }

    /// Device count, name of device 0 and the driver's CUDA version.
    pub fn info(&self) -> Result<GpuInfo, GpuError> {
        // SAFETY: signatures as in cuda.h; every out-pointer points at a live local of the right type.
        unsafe {
            let mut version: c_int = 0;
            check(
                "cuDriverGetVersion",
                self.sym::<unsafe extern "C" fn(*mut c_int) -> CuResult>(b"cuDriverGetVersion\0")?(
                    &mut version,
                ),
            )?;
            let mut count: c_int = 0;
            check(
                "cuDeviceGetCount",
                self.sym::<unsafe extern "C" fn(*mut c_int) -> CuResult>(b"cuDeviceGetCount\0")?(
                    &mut count,
                ),
            )?;
            if count < 1 {
                return Err(GpuError::NoDevice);
            }
            let dev = self.device(0)?;
            let mut name = [0 as c_char; 256];
            check(
                "cuDeviceGetName",
                self.sym::<unsafe extern "C" fn(*mut c_char, c_int, CuDevice) -> CuResult>(
                    b"cuDeviceGetName\0",
                )?(name.as_mut_ptr(), name.len() as c_int, dev),
            )?;
            Ok(GpuInfo {
                devices: count,
                name: CStr::from_ptr(name.as_ptr()).to_string_lossy().into_owned(),
                cuda_version: format!("{}.{}", version / 1000, (version % 1000) / 10),
            })
        }
    }

    fn device(&self, ordinal: c_int) -> Result<CuDevice, GpuError> {
        let mut dev: CuDevice = 0;
        // SAFETY: cuDeviceGet(CUdevice*, int) -> CUresult.
        let code = unsafe {
            self.sym::<unsafe extern "C" fn(*mut CuDevice, c_int) -> CuResult>(b"cuDeviceGet\0")?(
                &mut dev, ordinal,
            )
        };
        check("cuDeviceGet", code)?;
        Ok(dev)
    }

    /// Copies `data` to device 0 and back through the device's memory (its primary context), returning the copy.
    pub fn round_trip(&self, data: &[u8]) -> Result<Vec<u8>, GpuError> {
        let dev = self.device(0)?;
        // SAFETY: signatures as in cuda.h; the device buffer is `data.len()` bytes and freed before returning; the
        // primary context is retained and released in pairs.
        unsafe {
            let retain = self.sym::<unsafe extern "C" fn(*mut CuContext, CuDevice) -> CuResult>(
                b"cuDevicePrimaryCtxRetain\0",
            )?;
            let release = self.sym::<unsafe extern "C" fn(CuDevice) -> CuResult>(
                b"cuDevicePrimaryCtxRelease_v2\0",
            )?;
            let set_current =
                self.sym::<unsafe extern "C" fn(CuContext) -> CuResult>(b"cuCtxSetCurrent\0")?;
            let alloc = self.sym::<unsafe extern "C" fn(*mut CuDevicePtr, usize) -> CuResult>(
                b"cuMemAlloc_v2\0",
            )?;
            let free =
                self.sym::<unsafe extern "C" fn(CuDevicePtr) -> CuResult>(b"cuMemFree_v2\0")?;
            let htod = self
                .sym::<unsafe extern "C" fn(CuDevicePtr, *const c_void, usize) -> CuResult>(
                    b"cuMemcpyHtoD_v2\0",
                )?;
            let dtoh = self
                .sym::<unsafe extern "C" fn(*mut c_void, CuDevicePtr, usize) -> CuResult>(
                    b"cuMemcpyDtoH_v2\0",
                )?;

            let mut ctx: CuContext = std::ptr::null_mut();
            check("cuDevicePrimaryCtxRetain", retain(&mut ctx, dev))?;
            let result = (|| {
                check("cuCtxSetCurrent", set_current(ctx))?;
                let mut ptr: CuDevicePtr = 0;
                check("cuMemAlloc_v2", alloc(&mut ptr, data.len()))?;
                let mut back = vec![0u8; data.len()];
                let copied = check(
                    "cuMemcpyHtoD_v2",
                    htod(ptr, data.as_ptr().cast(), data.len()),
                )
                .and_then(|_| {
                    check(
                        "cuMemcpyDtoH_v2",
                        dtoh(back.as_mut_ptr().cast(), ptr, data.len()),
                    )
                });
                check("cuMemFree_v2", free(ptr))?;
                copied.map(|_| back)
            })();
            let released = check("cuDevicePrimaryCtxRelease_v2", release(dev));
            let back = result?;
            released?;
            Ok(back)
        }
    }
}
