"""Using a trained model: depth maps of images, metric depth, point clouds."""
