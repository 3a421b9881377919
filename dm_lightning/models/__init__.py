"""The networks as plain ``nn.Module``s, usable without Lightning: DepthMaster, its loading,
the Fourier Enhancement block, Feature Alignment, encoders, U-Net hooks, the stage-1 network."""
