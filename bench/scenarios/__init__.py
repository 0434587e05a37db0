"""Scenario benchmark: where users feel the load, stock ComfyUI beside Hearth in one run (issue 10).

    python -m bench.scenarios            # full-size SD1.5 (~2.1 GB fp16) and two ~300 MB LoRAs, 3 repeats
    python -m bench.scenarios --quick    # tiny SD1.5-format checkpoint, one repeat (the test runs this)

Drives a real ComfyUI (found as the tests find it: $HEARTH_COMFYUI or ~/comfy/ComfyUI) through its HTTP
and websocket API, one fresh process per measurement, with a private Hearth daemon:

1. restart, page cache warm: the checkpoint loader node's time and the private memory after it;
2. restart after the page cache lost the file (posix_fadvise DONTNEED): the same;
3. 1, 2 and 4 processes with the checkpoint loaded and used: total PSS, private memory of each;
4. LoRA switching A -> B -> A -> none on a loaded model: node and prompt time, base model reused;
5. the first txt2img prompt (64x64, 1 step) after ComfyUI starts, end to end;
6. daemon restart: until its re-adopted segments are served, and the first prompt after it;
7. with CUDA: host-to-device bandwidth from the segment, pageable and pinned memory; time to the GPU;
8. split files (FLUX layout: UNETLoader, CLIPLoader, VAELoader) on stock ComfyUI and with Hearth.StockLoaders;
9. the stock CheckpointLoaderSimple, the same two ways; 10. a diffusers from_pretrained, stock and patch();
11-13 (warm.py): reboot -> first prompt with the warm set and without; a queue of 4 prompts over 2
checkpoints with the queue's prefetch and without; the first sampler step with eager load and without.

Prints one table (min and median, ratio Hearth / stock, targets) and writes scenarios.json, the chart
scenarios.png and README-results.md (bench/results/ for a full run, bench/out/quick/ for --quick).
"""
