import { StrictMode } from 'react';
import { createRoot } from 'react-dom/client';
import { createClient } from '@taskgate/client';
import { TaskgateProvider } from '@taskgate/client/react';

import { App } from './App';
import './taskgate-types'; // the request types of the host's plugins (taskgate-codegen)
import './styles.css';

// One client for the page, made outside React (StrictMode renders components twice).
// No url: the page's own origin, i.e. the taskgate host that serves it.
const client = createClient();

createRoot(document.getElementById('root')!).render(
  <StrictMode>
    <TaskgateProvider client={client}>
      <App />
    </TaskgateProvider>
  </StrictMode>,
);
