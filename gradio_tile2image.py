from apps.builder import Slider, Task, launch

# the condition is the picture itself (shrunk to make the control invent detail); the generation starts from it
task = Task("tile", "Control Stable Diffusion with Tiles (detail and upscaling)", annotator="tile",
            control="control_v11f1e_sd15_tile.pth", detect_resolution=None, workflow="img2img", toy="plain",
            prompt="best quality",
            annotator_params=[Slider("downsample", 1.0, 8.0, step=0.1, label="Down-sampling rate")])

if __name__ == "__main__":
    launch(task)
