# dlp-relay container image: compile in a full build stage, run from a slim stage with production dependencies only, as the non-root node user.

# ---- build: dev dependencies and tsc, thrown away afterwards ----
FROM node:22-bookworm-slim AS build
WORKDIR /app
# Manifests first so the dependency layer is cached until package-lock.json changes.
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build

# ---- runtime ----
FROM node:22-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force
# Application files stay root-owned: the relay only needs to read them.
COPY --from=build /app/dist ./dist
COPY config ./config
# Spool, quarantine and outbox hold mail the relay has answered 250 for: created before VOLUME so a
# fresh volume inherits node's ownership, mode 0700 because the content is sensitive by definition.
RUN mkdir -p /var/lib/dlp-relay/spool /var/lib/dlp-relay/quarantine /var/lib/dlp-relay/outbox /var/lib/dlp-relay/cas-outbox \
 && chown -R node:node /var/lib/dlp-relay \
 && chmod -R 0700 /var/lib/dlp-relay
VOLUME ["/var/lib/dlp-relay"]
# The shipped config listens on loopback and keeps data under ./var; in a container the relay must
# listen on all interfaces and keep its data in the volume. Allowed client networks are left to the
# operator (DLP_RELAY_ALLOWED_CLIENTS): defaulting to "everyone" would make an open relay.
ENV DLP_RELAY_LISTEN=0.0.0.0:2525 \
    DLP_RELAY_SPOOL_DIR=/var/lib/dlp-relay/spool \
    DLP_RELAY_QUARANTINE_DIR=/var/lib/dlp-relay/quarantine \
    DLP_RELAY_OUTBOX_DIR=/var/lib/dlp-relay/outbox \
    DLP_RELAY_CAS_OUTBOX_DIR=/var/lib/dlp-relay/cas-outbox
USER node
# 2525 SMTP (unprivileged, so no root needed), 8025 admin/health/metrics HTTP. The admin listener stays
# on the container's loopback (the HEALTHCHECK uses it there); to publish /metrics and the API, set
# DLP_RELAY_ADMIN_LISTEN=0.0.0.0:8025 together with DLP_RELAY_ADMIN_TOKEN, behind TLS.
EXPOSE 2525 8025
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:8025/healthz', { signal: AbortSignal.timeout(3000) }).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
ENTRYPOINT ["node", "dist/cli/main.js"]
CMD ["serve"]
