"""Images to labels: decoding, preprocessing, the model, and the fetch → decode → predict stream."""
