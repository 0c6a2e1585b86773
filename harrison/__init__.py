"""harrison: a Caffe-faithful reproduction of the HARRISON hashtag recommendation benchmark."""

__version__ = "0.1.0"
