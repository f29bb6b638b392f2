from apps.builder import Task, launch

# instruct-pix2pix: the condition is the picture itself, the prompt an instruction (or a description)
task = Task("ip2p", "Edit Pictures by Instruction (instruct-pix2pix ControlNet)", annotator=None,
            control="control_v11e_sd15_ip2p.pth", detect_resolution=None, prompt="make it winter", toy=None)

if __name__ == "__main__":
    launch(task)
