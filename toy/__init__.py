"""The toy world: the shipped default model (a small SD and a shape-outline ControlNet trained on generated
shapes, so everything runs offline), the shapes data it learns from, the pictures it follows, how well it
follows them, and the differentiable form of that measure that training can use as a reward."""
