from apps.builder import Slider, Task, launch

task = Task("hough", "Control Stable Diffusion with Hough Line Maps (M-LSD)", annotator="mlsd",
            control=("control_sd15_mlsd.pth", "control_v11p_sd15_mlsd.pth"), prompt="a room",
            annotator_params=[Slider("value_threshold", 0.01, 2.0, step=0.01),
                   Slider("distance_threshold", 0.01, 20.0, step=0.01)])

if __name__ == "__main__":
    launch(task)
