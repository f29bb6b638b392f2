from apps.builder import ModelOptions, Task, launch

# trained on an anime SD 1.5 (Anything V3) with three 75-token prompt windows and CLIP's penultimate layer
task = Task("lineart_anime", "Control Anime Stable Diffusion with Anime Line Art", annotator="lineart_anime",
            control="control_v11p_sd15s2_lineart_anime.pth", base="anything-v3-full.safetensors",
            options=ModelOptions(text_windows=3, clip_skip=2), alternatives=("invert",),
            prompt="1girl, masterpiece, best quality, ultra-detailed, illustration")

if __name__ == "__main__":
    launch(task)
