// Outage and recovery log lines for a dependency (UCWI, the next hop): one warning when it starts failing, a reminder at most once per interval while it stays down, one line when it recovers.
import type { Logger } from 'pino';

export interface OutageState {
  since: string;
  failures: number;
  lastClass: string;
  lastDetail: string;
}

/**
 * Rate-limited on purpose: under load every message fails the same way, and a warning per message
 * would bury the one line an admin needs ("UCWI down since …, class auth").
 */
export class OutageLog {
  private state: { since: number; failures: number; lastClass: string; lastDetail: string; lastWarn: number; suppressed: number } | null = null;

  constructor(
    private readonly logger: Logger,
    private readonly dependency: string,
    private readonly intervalMs = 60_000,
    private readonly now: () => number = Date.now,
  ) {}

  failure(errorClass: string, detail: string): void {
    const t = this.now();
    const s = this.state;
    if (!s) {
      this.state = { since: t, failures: 1, lastClass: errorClass, lastDetail: detail, lastWarn: t, suppressed: 0 };
      this.logger.warn({ event: 'outage', dependency: this.dependency, errorClass, detail }, `${this.dependency} is failing (${errorClass}): ${detail}`);
      return;
    }
    s.failures++;
    s.lastClass = errorClass;
    s.lastDetail = detail;
    if (t - s.lastWarn < this.intervalMs) {
      s.suppressed++;
      return;
    }
    this.logger.warn(
      { event: 'outage', dependency: this.dependency, errorClass, detail, failures: s.failures, downMs: t - s.since, suppressed: s.suppressed },
      `${this.dependency} still failing (${errorClass}) after ${Math.round((t - s.since) / 1000)} s, ${s.failures} failures`,
    );
    s.lastWarn = t;
    s.suppressed = 0;
  }

  success(): void {
    const s = this.state;
    if (!s) return;
    this.state = null;
    const downMs = this.now() - s.since;
    this.logger.info(
      { event: 'recovered', dependency: this.dependency, failures: s.failures, downMs, lastClass: s.lastClass },
      `${this.dependency} recovered after ${Math.round(downMs / 1000)} s (${s.failures} failures)`,
    );
  }

  get current(): OutageState | null {
    const s = this.state;
    return s ? { since: new Date(s.since).toISOString(), failures: s.failures, lastClass: s.lastClass, lastDetail: s.lastDetail } : null;
  }
}
