from apps.builder import Check, Choice, Task, launch

task = Task("pose", "Control Stable Diffusion with Human Pose", annotator="pose",
            control=("control_sd15_openpose.pth", "control_v11p_sd15_openpose.pth"), nearest=True,
            prompt="a chef in the kitchen", toy=None, pose_editor=True,
            annotator_params=[Choice("detector", ["auto", "openpose", "mediapipe"]), Check("include_hand"),
                   Check("include_face")])

if __name__ == "__main__":
    launch(task)
