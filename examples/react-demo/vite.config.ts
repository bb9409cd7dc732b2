// Vite builds the demo into dist/, which the taskgate host serves (scripts/run). `npm run dev`
// serves it with hot reload instead and forwards Socket.IO to a host on TASKGATE_URL
// (default http://127.0.0.1:8080).
import react from '@vitejs/plugin-react';
import { defineConfig } from 'vite';

export default defineConfig({
  plugins: [react()],
  // @taskgate/client is linked from ../../client, which has its own React for its tests:
  // one copy of React for the whole page, or hooks break.
  resolve: { dedupe: ['react', 'react-dom'] },
  // Relative asset URLs: the page works wherever the host serves it.
  base: './',
  server: {
    proxy: { '/socket.io': { target: process.env.TASKGATE_URL ?? 'http://127.0.0.1:8080', ws: true } },
  },
  build: { outDir: 'dist', emptyOutDir: true },
});
