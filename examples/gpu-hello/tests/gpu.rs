//! The GPU test raibid-ci runs on a GPU agent (`.raibid.yaml`: `gpu: true`). It fails, saying why, on a machine
//! without an NVIDIA GPU and driver; raibid never sends it to one (the job waits for a GPU agent instead).

use gpu_hello::Driver;

fn driver() -> Driver {
    Driver::load().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_driver_sees_a_gpu() {
    let info = driver().info().unwrap_or_else(|e| panic!("{e}"));
    println!(
        "gpu: {} ({} device(s) visible), driver CUDA {}",
        info.name, info.devices, info.cuda_version
    );
    assert!(info.devices >= 1);
    assert!(!info.name.is_empty());
}

#[test]
fn memory_round_trips_through_the_gpu() {
    let data: Vec<u8> = (0..(1u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let back = driver().round_trip(&data).unwrap_or_else(|e| panic!("{e}"));
    assert!(back == data, "1 MiB copied to the GPU and back differs");
}
