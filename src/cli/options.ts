// Option parsing shared by the CLI's command modules.

/** commander argParser for a repeatable option: each occurrence is appended. */
export function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}
