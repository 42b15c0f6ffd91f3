// One error family: every refusal of the client is a ClientError with a one-line message that
// names the file, what was wrong and what to do.

export class ClientError extends Error {
  constructor(message) {
    super(message);
    this.name = this.constructor.name;
  }
}

// The bundle folder cannot be used: missing or changed file, unknown format, bad field.
export class BundleError extends ClientError {}

// One image cannot be read: not PNG/JPEG, truncated, or a shape the model does not take.
export class ImageError extends ClientError {}
