from apps.builder import ModelOptions, Slider, Task, launch

# the control passes only its residuals' averages, and on the conditional side of guidance only
task = Task("shuffle", "Control Stable Diffusion with Content Shuffle", annotator="shuffle",
            control="control_v11e_sd15_shuffle.pth", prompt="a house", options=ModelOptions(pooled=True), toy=None,
            annotator_params=[Slider("shuffle_seed", 0, 65535, label="Shuffle seed")])

if __name__ == "__main__":
    launch(task)
